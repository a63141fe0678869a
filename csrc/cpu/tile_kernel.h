// Interface between the ATen side of the CPU op (multilevel_ce_cpu.cpp: checks, planning, threads)
// and its tile kernel, which is compiled once per instruction set (tile_kernel_*.cpp) and picked
// at run time. Nothing here depends on ATen, so the per-instruction-set translation units include
// no PyTorch code.
#pragma once

#include <cstdint>

namespace hierparse {
namespace cpu {

// The image is cut into tiles of up to kTile pixels of one row.
constexpr int64_t kTile = 256;

enum class LogitType : int { Float, Double, Half, BFloat16 };

struct LevelArgs {
  const void* logits;
  void* grad;               // nullptr without gradients
  int64_t C;
  int64_t xs[4];            // logits strides (N, C, H, W), in elements
  int64_t gs[4];            // gradient strides
  const int32_t* table;     // row of K entries, -1 = ignored
  const float* class_w;     // C weights or nullptr (all 1)
  double grad_scale;
  double weight_sum;
};

struct KernelArgs {
  const LevelArgs* levels;
  int64_t num_levels;
  LogitType dtype;
  int64_t N, H, W, tiles_per_row, num_tiles;
  double label_smoothing;
  void* loss_map;          // [L, N, H, W] in the compute type for reduction "none", else nullptr
  double* tile_sums;       // [L, num_tiles] per-tile loss sums (summed in a fixed order later)
  bool streaming_stores;   // write gradients with non-temporal stores (too large for the caches)
};

// Bytes of scratch memory per class that run_tile needs (64-byte aligned).
constexpr int64_t kScratchBytesPerClass = 256;  // two blocks: 2 * HP_BLOCK_VECTORS * HP_VECTOR_BYTES

// Every level of one tile: `raw` holds the tile's label ids (as int32), read once for all levels.
using TileKernel = void (*)(const KernelArgs& args, int64_t tile, const int32_t* raw, void* scratch);

// Orders this thread's streaming stores before the results are used (call after the last tile).
using FenceFn = void (*)();

struct CpuCapability {
  const char* name;
  TileKernel run_tile;
  FenceFn fence;
};

// The kernels of each instruction set; avx2 and avx512 exist only in x86-64 GCC builds.
CpuCapability capability_default();
CpuCapability capability_avx2();
CpuCapability capability_avx512();

}  // namespace cpu
}  // namespace hierparse
