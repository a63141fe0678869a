// Host-side part of hierparse::upsample_decode, shared by the CPU and CUDA backends: argument checks
// (all before any kernel runs), each level's bilinear taps and the output maps.
#pragma once

#include <ATen/ATen.h>

#include <vector>

#include "upsample_decode.h"

namespace hierparse {

struct DecodeLevelPlan {
  int64_t C, h, w;
  std::vector<DecodeTap> rows, cols;  // H and W taps in double
};

struct DecodePlan {
  DecodeShape shape;      // its ancestors point into `ancestors`
  at::Tensor ancestors;   // int64 [levels_out, F] on the CPU, contiguous
  std::vector<DecodeLevelPlan> levels;
  int64_t N = 0, H = 0, W = 0;
  std::vector<at::Tensor> outputs;  // [N, H, W] per output level on the logits' device: uint8 or int64
};

// Validates every argument (one-line errors naming the level and value) and allocates the outputs.
// `covered` (h_frac, w_frac): the output spans only that top-left part of every level's logits
// (an image padded to a canvas), as upsample_bilinear2d with scales H / (h_frac * h) would map it.
DecodePlan plan_decode(at::TensorList logits, const at::Tensor& ancestors, at::IntArrayRef size, int64_t mode,
                       bool align_corners, c10::optional<at::ArrayRef<double>> covered);

}  // namespace hierparse
