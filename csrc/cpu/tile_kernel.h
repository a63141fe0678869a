// Interface between the ATen side of the CPU op (multilevel_ce_cpu.cpp: checks, planning, threads)
// and its tile kernel, which is compiled once per instruction set (tile_kernel_*.cpp) and picked
// at run time. Nothing here depends on ATen, so the per-instruction-set translation units include
// no PyTorch code.
#pragma once

#include <cstdint>

#include "class_sets.h"

namespace hierparse {
namespace cpu {

// The image is cut into tiles of up to kTile pixels of one row.
constexpr int64_t kTile = 256;

enum class LogitType : int { Float, Double, Half, BFloat16 };

struct LevelArgs {
  const void* logits;
  void* grad;               // nullptr without gradients
  void* loss_map;           // this level's [N, H, W] losses (compute type) for reduction "none", else nullptr
  const void* grad_weights; // [N, H, W] weights of each pixel's gradient (compute type; units only), or nullptr
  int64_t C;
  int64_t xs[4];            // logits strides (N, C, H, W), in elements
  int64_t gs[4];            // gradient strides
  const int32_t* table;     // row of K entries, -1 = ignored
  const float* class_w;     // C weights or nullptr (all 1)
  LevelSets sets;           // class sets: table entries C + s (multilevel_ce.h)
  double grad_scale;
  double weight_sum;
};

struct KernelArgs {
  const LevelArgs* levels;
  int64_t num_levels;
  LogitType dtype;
  int64_t N, H, W, tiles_per_row, num_tiles;
  double label_smoothing;
  double* tile_sums;       // [L, num_tiles] per-tile loss sums (summed in a fixed order later)
  bool streaming_stores;   // write gradients with non-temporal stores (too large for the caches)
  bool prefetch_logits;    // prefetch the logits into L2 ahead of pass 1 (not for tiles already in the caches)
};

// Bytes of scratch memory per class that run_tile needs (64-byte aligned): four blocks of
// HP_BLOCK_VECTORS * HP_VECTOR_BYTES, two of logits or exponentials and two of set shares.
constexpr int64_t kScratchBytesPerClass = 512;

// Levels whose logits are smaller than the labels (h <= H, w <= W, not both equal) are upsampled
// on the fly, as ATen's upsample_bilinear2d does, one unit of work at a time: a unit is up to
// kUnitRows low-resolution rows [r0, r1) of one image and handles the full-resolution rows whose
// upper source row lies in it. It writes the gradient rows r0 + 1 .. r1 - 1 and row r0 (its own part), and keeps
// its part of row r1 (the first row of the next unit) as a "halo"; join_unit adds that into the next
// unit's first row once all units are done. Every sum thus has an order fixed by the sizes alone.
constexpr int64_t kUnitRows = 16;

// Bilinear source indices and weights along one axis (H or W outputs): output i reads input i0[i]
// with weight w0[i] and i1[i] with weight w1[i], and its gradient goes back with grad_w0[i] and
// grad_w1[i]; weights in the compute type (float, or double). The two kinds differ for half and
// bfloat16 logits only, whose interpolation weights ATen rounds to the logits' type. Both indices
// grow with i: the outputs whose i0 is j are begin0[j] .. begin0[j + 1] - 1.
struct UpsampleAxis {
  const int64_t* i0;
  const int64_t* i1;
  const int64_t* begin0;  // [inputs + 1]
  const void* w0;
  const void* w1;
  const void* grad_w0;
  const void* grad_w1;
};

// The gradient of the columns as a banded matrix, so that its scatter runs as vector operations
// across kBandInputs low-resolution columns: block b (columns kBandInputs * b and on) gathers the
// full-resolution columns first[b] .. first[b] + offset[b + 1] - offset[b] - 1, column x with the
// weights row weights[offset[b] + x - first[b]] (kBandInputs entries in the compute type, the
// grad_w0/grad_w1 of x at the places of i0[x] and i1[x], zero elsewhere).
constexpr int64_t kBandInputs = 8;
struct GradientBand {
  const int64_t* first;   // [blocks]
  const int64_t* offset;  // [blocks + 1]
  const void* weights;
};

// The levels of one low-resolution size h x w and their units.
struct UpsampleGroup {
  const LevelArgs* levels;  // logits and gradients h x w, loss maps H x W
  int64_t num_levels, total_classes;
  int64_t h, w;
  UpsampleAxis rows, cols;
  GradientBand col_band;
  int64_t units_per_image, num_units;
  double* unit_sums;           // [num_levels, num_units] per-unit loss sums
  void* halos;                 // [num_units, total_classes, w] compute type: each unit's part of row r1
  void* first_rows;            // the same for row r0, for half/bfloat16 only (rounded once, after the join)
};

// Reads `count` raw label ids from element `begin` of the labels (any integer type) as int32.
using LabelLoader = void (*)(const void* labels, int64_t begin, int64_t count, int32_t* raw);

// Per-unit state of one level in a thread's scratch: two low-resolution rows of logits interpolated
// horizontally to W columns ([2, C, W], tagged by their row, -1 when empty), two full-width rows of
// gradients gathered vertically (the same), and the unit's low-resolution gradient rows
// [kUnitRows + 1, C, w], all in the compute type.
struct UnitLevelState {
  void* rows;
  int64_t row_of[2];
  void* grad_rows;
  int64_t grad_row_of[2];
  void* unit_grads;
  double loss_sum;
};

// Zeros after a source row of logits, into which the last window of its interpolation may reach.
constexpr int64_t kSourcePadding = 32;

struct UnitScratch {
  UnitLevelState* levels;  // one per level of the group
  int32_t* raw;            // one row of labels
  void* source_rows;       // [C_max, w + kSourcePadding] one low-resolution row per class, compute type
  void* blocks;            // the tile kernel's scratch
};

// Carves a thread's scratch for the units of `group` out of `base` (64-byte aligned pieces, into
// *out) and returns its size in bytes; with a null base it only counts.
inline int64_t carve_unit_scratch(char* base, const UpsampleGroup& group, int64_t W, int64_t compute_bytes,
                                  bool with_grad, UnitScratch* out) {
  int64_t used = 0;
  auto take = [&](int64_t bytes) -> void* {
    void* piece = base ? base + used : nullptr;
    used += (bytes + 63) / 64 * 64;
    return piece;
  };
  UnitScratch s{static_cast<UnitLevelState*>(take(group.num_levels * int64_t(sizeof(UnitLevelState)))), nullptr,
                nullptr, nullptr};
  int64_t max_classes = 0;
  for (int64_t k = 0; k < group.num_levels; ++k) {
    const int64_t C = group.levels[k].C;
    max_classes = C > max_classes ? C : max_classes;
    void* rows = take(2 * C * W * compute_bytes);
    void* grad_rows = with_grad ? take(2 * C * W * compute_bytes) : nullptr;
    void* unit_grads = with_grad ? take((kUnitRows + 1) * C * group.w * compute_bytes) : nullptr;
    if (base) s.levels[k] = UnitLevelState{rows, {-1, -1}, grad_rows, {-1, -1}, unit_grads, 0.0};
  }
  s.raw = static_cast<int32_t*>(take(W * 4));
  s.source_rows = take(max_classes * (group.w + kSourcePadding) * compute_bytes);
  s.blocks = take(max_classes * kScratchBytesPerClass);
  if (out) *out = s;
  return used;
}

// Every level of one tile: `raw` holds the tile's label ids (as int32), read once for all levels.
using TileKernel = void (*)(const KernelArgs& args, int64_t tile, const int32_t* raw, void* scratch);

// Orders this thread's streaming stores before the results are used (call after the last tile).
using FenceFn = void (*)();

// One unit of a group (see kUnitRows); `scratch` as carve_unit_scratch lays it out.
using UnitKernel = void (*)(const KernelArgs& args, const UpsampleGroup& group, int64_t unit, const void* labels,
                            LabelLoader load_labels, void* scratch);

// Adds the halo of the unit above into this unit's first gradient row (units that start an image
// have none); runs after every unit of the group is done.
using JoinFn = void (*)(const KernelArgs& args, const UpsampleGroup& group, int64_t unit);

// Rows y_begin .. y_end - 1 of image n of hierparse::upsample_decode (decode_kernel.h); `scratch`
// holds decode_scratch_bytes(args) bytes, 64-byte aligned.
struct DecodeArgs;
using DecodeKernel = void (*)(const DecodeArgs& args, int64_t n, int64_t y_begin, int64_t y_end, void* scratch);

struct CpuCapability {
  const char* name;
  TileKernel run_tile;
  FenceFn fence;
  UnitKernel run_unit;
  JoinFn join_unit;
  DecodeKernel run_decode;
};

// The kernels of the best instruction set this CPU runs, or of the one HIERPARSE_CPU_CAPABILITY
// names (chosen once per process, multilevel_ce_cpu.cpp).
const CpuCapability& selected_capability();

// The kernels of each instruction set; avx2 and avx512 exist only in x86-64 GCC builds.
CpuCapability capability_default();
CpuCapability capability_avx2();
CpuCapability capability_avx512();

}  // namespace cpu
}  // namespace hierparse
