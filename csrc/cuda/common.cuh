// Pieces shared by the CUDA kernels of the fused ops (multilevel_ce_kernels.cuh, tree_min_kernels.cuh): the
// launch shape, the label pre-pass and the deterministic per-level loss sums.
//
// Label pre-pass (label_stats, one small kernel): min, max and histogram over 0..K-1 of the raw label
// ids, copied to the host (one [K + 2] int64 tensor), where check_label_range raises on ids outside
// the table before the op's main kernel runs.
//
// Loss sums, with no floating-point atomics: each thread of the main kernel accumulates its pixels'
// losses in double, each block reduces its threads in a fixed tree into a [L, blocks] buffer
// (write_block_sums), and sum_level_blocks sums each level's row in a fixed order and multiplies it
// by the level's loss scale. The grid size depends only on the device, the kernel and the pixel count
// (grid_size), so the same inputs on the same device give bitwise identical losses.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <vector>

#include "backend.cuh"

namespace hierparse {

constexpr int kThreads = 256;  // threads per block of every kernel here (a power of two)

// Blocks for a grid-stride loop over num_pixels: as many as fit on the device at once (the
// occupancy of `kernel`), fewer for small inputs. It depends only on the device, the kernel and
// the pixel count, so results (block sums) are reproducible on the same device.
template <typename Kernel>
int64_t grid_size(Kernel kernel, int64_t num_pixels, size_t shared_bytes) {
  const int64_t needed = (num_pixels + kThreads - 1) / kThreads;
  return std::max<int64_t>(1, std::min(needed, resident_blocks(kernel, kThreads, shared_bytes)));
}

// Pixel p (0 <= p < N*H*W, in NHW order) of a strided [N, H, W] tensor.
struct PixelIndex {
  int64_t HW, W;
  int64_t s0, s1, s2;  // strides of N, H, W
  static PixelIndex of(const at::Tensor& t) {
    return {t.size(1) * t.size(2), t.size(2), t.stride(0), t.stride(1), t.stride(2)};
  }
  __device__ __forceinline__ int64_t offset(int64_t p) const {
    const int64_t n = p / HW;
    const int64_t hw = p - n * HW;
    const int64_t h = hw / W;
    const int64_t w = hw - h * W;
    return n * s0 + h * s1 + w * s2;
  }
};

// Runs the label pre-pass on the labels' device and current stream and returns the CPU int64 tensor
// [K + 2]: the counts of ids 0..K-1, then the min and max of all ids (0 included in both, as in the
// CPU backends: only their comparison with 0..K-1 matters). Synchronises.
at::Tensor label_stats(const at::Tensor& labels, int64_t K);

// Sums thread_sums[l * kThreads + t] (shared memory, one entry per level l < num_levels and thread t
// of the block) over the block's threads in a fixed tree and writes level l's total to
// block_sums[l * gridDim.x + blockIdx.x]. Every thread of the block must call it; it overwrites
// thread_sums.
__device__ __forceinline__ void write_block_sums(double* thread_sums, int num_levels, double* __restrict__ block_sums) {
  const int tid = threadIdx.x;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {  // fixed tree: deterministic
    if (tid < s) {
      for (int l = 0; l < num_levels; ++l) thread_sums[l * kThreads + tid] += thread_sums[l * kThreads + tid + s];
    }
    __syncthreads();
  }
  for (int l = tid; l < num_levels; l += kThreads) {
    block_sums[static_cast<int64_t>(l) * gridDim.x + blockIdx.x] = thread_sums[l * kThreads];
  }
}

// losses[l] = scales[l] * (sum of block_sums[l, :], in a fixed order) for every level l, in the
// losses' dtype (float or double); block_sums: double [L, blocks] on the losses' device.
void sum_level_blocks(const at::Tensor& block_sums, const std::vector<double>& scales, at::Tensor& losses);

}  // namespace hierparse
