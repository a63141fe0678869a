// The label pre-pass and the final loss sums shared by the CUDA kernels (common.cuh): compiled by
// common.cu for the GPU and by csrc/emulate/common.cpp for the CPU emulation.
#pragma once

#include <ATen/Dispatch.h>

#include "common.cuh"

namespace hierparse {
namespace {

constexpr int64_t kMaxSharedHistogram = 8192;  // label bins kept in shared memory (32 KiB)
constexpr int kLevelsPerSum = 8;               // levels summed by one launch of sum_levels_kernel

// stats: int64 [K + 2], zero on entry: counts of ids 0..K-1, then min and max of all ids (0 is
// included in both, as in the CPU backend: only their comparison with 0..K-1 matters).
template <typename label_t>
__global__ void __launch_bounds__(kThreads)
    label_stats_kernel(const label_t* __restrict__ labels, PixelIndex index, int64_t num_pixels,
                       int64_t K, bool shared_histogram, unsigned long long* __restrict__ counts,
                       long long* __restrict__ min_max) {
  HP_DYNAMIC_SHARED(unsigned int, histogram);  // K bins when shared_histogram
  __shared__ long long block_min[kThreads];
  __shared__ long long block_max[kThreads];
  const int tid = threadIdx.x;
  if (shared_histogram) {
    for (int64_t k = tid; k < K; k += kThreads) histogram[k] = 0;
    __syncthreads();
  }
  long long lo = 0, hi = 0;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t p = static_cast<int64_t>(blockIdx.x) * kThreads + tid; p < num_pixels; p += stride) {
    const long long id = static_cast<long long>(labels[index.offset(p)]);
    lo = id < lo ? id : lo;
    hi = id > hi ? id : hi;
    if (id >= 0 && id < K) {
      if (shared_histogram) {
        atomicAdd(&histogram[id], 1u);
      } else {
        atomicAdd(&counts[id], 1ull);
      }
    }
  }
  block_min[tid] = lo;
  block_max[tid] = hi;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (tid < s) {
      block_min[tid] = block_min[tid + s] < block_min[tid] ? block_min[tid + s] : block_min[tid];
      block_max[tid] = block_max[tid + s] > block_max[tid] ? block_max[tid + s] : block_max[tid];
    }
    __syncthreads();
  }
  if (tid == 0) {
    atomicMin(&min_max[0], block_min[0]);  // integer atomics: the result does not depend on order
    atomicMax(&min_max[1], block_max[0]);
  }
  if (shared_histogram) {
    for (int64_t k = tid; k < K; k += kThreads) {
      if (histogram[k] != 0) atomicAdd(&counts[k], static_cast<unsigned long long>(histogram[k]));
    }
  }
}

// The loss scales of up to kLevelsPerSum levels, passed by value.
struct LossScales {
  double value[kLevelsPerSum];
};

// One block per level l of a launch: losses[l] = scales[l] * sum of block_sums[l, :], summed in a
// fixed order.
template <typename loss_t>
__global__ void __launch_bounds__(kThreads)
    sum_levels_kernel(const double* __restrict__ block_sums, int64_t num_blocks,
                      const __grid_constant__ LossScales scales, loss_t* __restrict__ losses) {
  __shared__ double partial[kThreads];
  const int tid = threadIdx.x;
  const int l = blockIdx.x;
  double total = 0;
  for (int64_t b = tid; b < num_blocks; b += kThreads) total += block_sums[l * num_blocks + b];
  partial[tid] = total;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (tid < s) partial[tid] += partial[tid + s];
    __syncthreads();
  }
  if (tid == 0) losses[l] = static_cast<loss_t>(partial[0] * scales.value[l]);
}

}  // namespace

at::Tensor label_stats(const at::Tensor& labels, int64_t K) {
  at::Tensor stats = at::zeros({K + 2}, labels.options().dtype(at::kLong));
  const int64_t num_pixels = labels.numel();
  if (num_pixels > 0) {
    const PixelIndex index = PixelIndex::of(labels);
    const bool shared_histogram = K <= kMaxSharedHistogram;
    const size_t shared_bytes = shared_histogram ? static_cast<size_t>(K) * sizeof(unsigned int) : 0;
    auto* counts = reinterpret_cast<unsigned long long*>(stats.data_ptr<int64_t>());
    auto* min_max = reinterpret_cast<long long*>(stats.data_ptr<int64_t>() + K);
    HP_DISPATCH_LABEL_TYPES(labels.scalar_type(), "hierparse_label_stats_cuda", [&] {
      const int64_t blocks = grid_size(label_stats_kernel<scalar_t>, num_pixels, shared_bytes);
      launch_kernel(label_stats_kernel<scalar_t>, blocks, kThreads, shared_bytes, labels.const_data_ptr<scalar_t>(),
                    index, num_pixels, K, shared_histogram, counts, min_max);
    });
  }
  return stats.cpu();  // waits for the kernel on the current stream
}

void sum_level_blocks(const at::Tensor& block_sums, const std::vector<double>& scales, at::Tensor& losses) {
  const int64_t L = static_cast<int64_t>(scales.size());
  const int64_t blocks = block_sums.size(1);
  AT_DISPATCH_FLOATING_TYPES(losses.scalar_type(), "hierparse_sum_level_blocks_cuda", [&] {
    for (int64_t first = 0; first < L; first += kLevelsPerSum) {  // kLevelsPerSum levels per launch
      const int64_t count = std::min<int64_t>(kLevelsPerSum, L - first);
      LossScales launch_scales{};
      for (int64_t i = 0; i < count; ++i) launch_scales.value[i] = scales[first + i];
      launch_kernel(sum_levels_kernel<scalar_t>, count, kThreads, 0, block_sums.const_data_ptr<double>() + first * blocks,
                    blocks, launch_scales, losses.data_ptr<scalar_t>() + first);
    }
  });
}

}  // namespace hierparse
