// Interface between the ATen side of the CPU upsample_decode (upsample_decode_cpu.cpp: checks,
// tables, threads) and its row kernel, compiled once per instruction set (decode_kernel_impl.h,
// included by tile_kernel_*.cpp) and picked at run time with the loss kernels.
#pragma once

#include <cstdint>

#include "cpu/tile_kernel.h"
#include "upsample_decode.h"

namespace hierparse {
namespace cpu {

// Bilinear taps along one axis of one level: output o reads inputs i0[o] and i1[o] with the weights
// w0[o] and w1[o] in the compute type (float, or double for float64 logits) on the fast path, and
// with 1 - lambda[o] and lambda[o] in double when a pixel is decided again.
struct DecodeAxis {
  const int64_t* i0;
  const int64_t* i1;
  const void* w0;
  const void* w1;
  const double* lambda;
};

struct DecodeLevelArgs {
  const void* logits;
  int64_t C, h, w;
  int64_t xs[4];  // strides (N, C, h, w), in elements
  DecodeAxis rows, cols;
};

struct DecodeArgs {
  const DecodeLevelArgs* levels;  // shape.levels_in of them
  DecodeShape shape;              // its ancestors on the CPU
  LogitType dtype;
  int64_t H, W;
  void* const* outputs;           // shape.levels_out maps [N, H, W]
  const int* output_bytes;        // per output map: 1 (uint8) or 8 (int64)
};

// Per level: two horizontally interpolated source rows and the interpolated row [C, W] each; then
// the double values of one pixel's classes, for pixels decided again.
inline int64_t decode_scratch_bytes(const DecodeArgs& args, int64_t compute_bytes) {
  int64_t bytes = 0, classes = 0;
  for (int l = 0; l < args.shape.levels_in; ++l) {
    bytes += (3 * args.levels[l].C * args.W * compute_bytes + 63) / 64 * 64;
    classes += args.levels[l].C;
  }
  return bytes + (classes * 8 + 63) / 64 * 64;
}

}  // namespace cpu
}  // namespace hierparse
