// CUDA kernels of hierparse::multilevel_ohem_cross_entropy (ohem.h): the selection of the kept
// pixels, level by level, as a radix select over the bits of the target probabilities (non-negative
// floats order as their bit patterns), 8 bits a pass, all on the device:
//   count_kernel             the level's valid pixels, and those below the threshold;
//   start_select_kernel      one thread: the floor's rank, and whether the threshold is the cut (more
//                            valid pixels than the rank lie below it, so the floor is under it: the
//                            passes below then return at once, as the CPU skips its nth_element);
//   digit_histogram_kernel   per pass, the histogram of the next 8 bits of the valid pixels whose
//                            higher bits equal the floor's found so far (shared-memory bins, then
//                            one integer atomic per bin and block);
//   pick_digit_kernel        one thread: the bin holding the floor's rank, appended to the floor;
//   keep_kernel              kept = valid and probability < max(floor, threshold) (1 or 0), and their count.
// 4 passes for float32 probabilities, 8 for float64; integer atomics only, so the result does not
// depend on the order of the blocks. The same kept pixels as the CPU's nth_element (the floor is the
// exact rank-th value either way). Nothing is read back to the host: the decision to skip the
// passes lives in the level's state on the device.
//
// Compiled by ohem_cuda.cu for the GPU and by csrc/emulate/ohem.cpp for the CPU emulation.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "common.cuh"
#include "ohem.h"

namespace hierparse {
namespace {

constexpr int kRadixBits = 8;
constexpr int kRadixBins = 1 << kRadixBits;
// A level's selection state, unsigned long long [kStateSize]: its valid pixels, those below the
// threshold, 1 when the threshold is the cut (no pass needed), the rank still to find within the
// current prefix, the floor's bits found so far, and its kept pixels.
constexpr int kValid = 0, kBelow = 1, kThresholdIsCut = 2, kRank = 3, kFloorBits = 4, kKept = 5, kStateSize = 6;

template <typename scalar_t>
using BitsOf = std::conditional_t<sizeof(scalar_t) == 8, unsigned long long, unsigned int>;

template <typename scalar_t>
__device__ __forceinline__ BitsOf<scalar_t> bits_of(scalar_t value) {
  BitsOf<scalar_t> bits;
  memcpy(&bits, &value, sizeof(bits));
  return bits;
}

template <typename scalar_t>
__device__ __forceinline__ scalar_t value_of(BitsOf<scalar_t> bits) {
  scalar_t value;
  memcpy(&value, &bits, sizeof(value));
  return value;
}

// state[slot] += the block's `count`s (every thread of the block calls it).
__device__ __forceinline__ void add_block_count(unsigned long long count, unsigned long long* __restrict__ state,
                                                int slot) {
  __shared__ unsigned long long block_count;
  if (threadIdx.x == 0) block_count = 0;
  __syncthreads();
  if (count != 0) atomicAdd(&block_count, count);
  __syncthreads();
  if (threadIdx.x == 0 && block_count != 0) atomicAdd(&state[slot], block_count);
}

template <typename scalar_t, typename label_t>
__global__ void __launch_bounds__(kThreads)
    count_kernel(const scalar_t* __restrict__ probability, const label_t* __restrict__ labels, PixelIndex index,
                 int64_t num_pixels, const int32_t* __restrict__ valid, scalar_t threshold,
                 unsigned long long* __restrict__ state) {
  unsigned long long count = 0, below = 0;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t p = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; p < num_pixels; p += stride) {
    const bool scored = valid[static_cast<int64_t>(labels[index.offset(p)])] != 0;
    count += scored;
    below += scored && probability[p] < threshold;
  }
  add_block_count(count, state, kValid);
  add_block_count(below, state, kBelow);
}

// One thread: the floor's rank, and whether the threshold is the cut (also for a level without
// valid pixels, whose mask is empty whatever the cut).
__global__ void start_select_kernel(unsigned long long* __restrict__ state, int64_t min_kept, int64_t N) {
  if (threadIdx.x != 0) return;
  if (state[kValid] == 0) {
    state[kThresholdIsCut] = 1;
    return;
  }
  const auto rank = static_cast<unsigned long long>(ohem_floor_rank(min_kept, N, static_cast<int64_t>(state[kValid])));
  state[kRank] = rank;
  state[kThresholdIsCut] = state[kBelow] > rank;
}

// histogram[b] += the valid pixels whose bits above `shift + 8` equal the floor's found so far and
// whose bits shift .. shift + 7 are b.
template <typename scalar_t, typename label_t>
__global__ void __launch_bounds__(kThreads)
    digit_histogram_kernel(const scalar_t* __restrict__ probability, const label_t* __restrict__ labels,
                           PixelIndex index, int64_t num_pixels, const int32_t* __restrict__ valid,
                           const unsigned long long* __restrict__ state, int shift,
                           unsigned long long* __restrict__ histogram) {
  using bits_t = BitsOf<scalar_t>;
  if (state[kThresholdIsCut]) return;  // the whole block: the floor is not needed
  __shared__ unsigned int bins[kRadixBins];
  for (int b = threadIdx.x; b < kRadixBins; b += kThreads) bins[b] = 0;
  __syncthreads();
  const int high = shift + kRadixBits;
  const bits_t mask = high >= static_cast<int>(8 * sizeof(bits_t)) ? bits_t(0) : ~bits_t(0) << high;
  const bits_t prefix = static_cast<bits_t>(state[kFloorBits]) & mask;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t p = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; p < num_pixels; p += stride) {
    if (!valid[static_cast<int64_t>(labels[index.offset(p)])]) continue;
    const bits_t bits = bits_of(probability[p]);
    if ((bits & mask) == prefix) atomicAdd(&bins[(bits >> shift) & (kRadixBins - 1)], 1u);
  }
  __syncthreads();
  for (int b = threadIdx.x; b < kRadixBins; b += kThreads) {
    if (bins[b] != 0) atomicAdd(&histogram[b], static_cast<unsigned long long>(bins[b]));
  }
}

// One thread: the bin of `histogram` that holds the remaining rank, appended to the floor's bits.
__global__ void pick_digit_kernel(const unsigned long long* __restrict__ histogram,
                                  unsigned long long* __restrict__ state, int shift) {
  if (threadIdx.x != 0 || state[kThresholdIsCut]) return;
  const unsigned long long rank = state[kRank];
  unsigned long long before = 0;
  int bin = 0;
  for (; bin < kRadixBins - 1 && before + histogram[bin] <= rank; ++bin) before += histogram[bin];
  state[kRank] = rank - before;
  state[kFloorBits] |= static_cast<unsigned long long>(bin) << shift;
}

template <typename scalar_t, typename label_t>
__global__ void __launch_bounds__(kThreads)
    keep_kernel(const scalar_t* __restrict__ probability, const label_t* __restrict__ labels, PixelIndex index,
                int64_t num_pixels, const int32_t* __restrict__ valid, unsigned long long* __restrict__ state,
                scalar_t threshold, scalar_t* __restrict__ kept) {
  const bool any_valid = state[kValid] != 0;
  const scalar_t floor = value_of<scalar_t>(static_cast<BitsOf<scalar_t>>(state[kFloorBits]));
  const scalar_t cut = state[kThresholdIsCut] || floor < threshold ? threshold : floor;  // clamp(floor, min=threshold)
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  unsigned long long count = 0;
  for (int64_t p = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; p < num_pixels; p += stride) {
    const bool keep = any_valid && valid[static_cast<int64_t>(labels[index.offset(p)])] != 0 && probability[p] < cut;
    kept[p] = keep;
    count += keep;
  }
  add_block_count(count, state, kKept);
}

std::tuple<at::Tensor, at::Tensor> ohem_keep_cuda(const at::Tensor& probability, const at::Tensor& labels,
                                                  const at::Tensor& valid_table, double threshold, int64_t min_kept) {
  at::Tensor kept = at::empty_like(probability);
  const int64_t L = probability.size(0), N = labels.size(0), num_pixels = labels.numel(), K = valid_table.size(1);
  at::Tensor state = at::zeros({L, kStateSize}, probability.options().dtype(at::kLong));
  if (num_pixels == 0) return {kept, state.select(1, kKept)};
  const PixelIndex index = PixelIndex::of(labels);
  AT_DISPATCH_FLOATING_TYPES(probability.scalar_type(), "hierparse_ohem_keep_cuda", [&] {
    using probability_t = scalar_t;
    constexpr int kPasses = static_cast<int>(8 * sizeof(probability_t)) / kRadixBits;
    at::Tensor histograms = at::zeros({L, kPasses, kRadixBins}, probability.options().dtype(at::kLong));
    HP_DISPATCH_LABEL_TYPES(labels.scalar_type(), "hierparse_ohem_keep_cuda_labels", [&] {
      const scalar_t* raw = labels.const_data_ptr<scalar_t>();
      for (int64_t l = 0; l < L; ++l) {
        const probability_t* p = probability.const_data_ptr<probability_t>() + l * num_pixels;
        const int32_t* valid = valid_table.const_data_ptr<int32_t>() + l * K;
        auto* level_state = reinterpret_cast<unsigned long long*>(state.data_ptr<int64_t>() + l * kStateSize);
        auto* count = count_kernel<probability_t, scalar_t>;
        launch_kernel(count, grid_size(count, num_pixels, 0), kThreads, 0, p, raw, index, num_pixels, valid,
                      static_cast<probability_t>(threshold), level_state);
        launch_kernel(start_select_kernel, 1, 1, 0, level_state, min_kept, N);
        for (int pass = 0; pass < kPasses; ++pass) {
          const int shift = (kPasses - 1 - pass) * kRadixBits;
          auto* histogram = reinterpret_cast<unsigned long long*>(histograms.data_ptr<int64_t>() +
                                                                  (l * kPasses + pass) * kRadixBins);
          auto* histogram_kernel = digit_histogram_kernel<probability_t, scalar_t>;
          const int64_t blocks = grid_size(histogram_kernel, num_pixels, 0);
          // a block's shared bins are 32-bit: it must see fewer than 2^32 pixels
          TORCH_CHECK(num_pixels / blocks < (int64_t(1) << 32) - kThreads, "multilevel_ohem_cross_entropy: ",
                      num_pixels, " pixels a level are too many for the CUDA selection");
          launch_kernel(histogram_kernel, blocks, kThreads, 0, p, raw, index, num_pixels, valid, level_state, shift,
                        histogram);
          launch_kernel(pick_digit_kernel, 1, 1, 0, histogram, level_state, shift);
        }
        auto* keep = keep_kernel<probability_t, scalar_t>;
        launch_kernel(keep, grid_size(keep, num_pixels, 0), kThreads, 0, p, raw, index, num_pixels, valid,
                      level_state, static_cast<probability_t>(threshold), kept.data_ptr<probability_t>() + l * num_pixels);
      }
    });
  });
  return {kept, state.select(1, kKept)};
}

std::tuple<at::Tensor, std::vector<at::Tensor>> multilevel_ohem_cross_entropy_cuda(
    at::TensorList logits, const at::Tensor& labels, const at::Tensor& table,
    const std::optional<at::Tensor>& class_weights, at::ArrayRef<double> level_weights, double label_smoothing,
    int64_t ignore_index, bool compute_grad, bool align_corners, const std::optional<at::Tensor>& set_members,
    double threshold, int64_t min_kept) {
  TORCH_CHECK_VALUE(!logits.empty(), "multilevel_ohem_cross_entropy: expected at least one level of logits");
  TORCH_CHECK_VALUE(on_kernel_device(logits[0]), "multilevel_ohem_cross_entropy: the CUDA kernel got level 0 "
                    "logits on ", logits[0].device());
  const KernelDeviceGuard guard(logits[0].device());
  return ohem_cross_entropy(HP_LIBRARY, &ohem_keep_cuda, logits, labels, table, class_weights, level_weights,
                            label_smoothing, ignore_index, compute_grad, align_corners, set_members, threshold,
                            min_kept);
}

}  // namespace

HP_REGISTER_CUDA_KERNELS(m) {
  m.impl("multilevel_ohem_cross_entropy", &multilevel_ohem_cross_entropy_cuda);
}

}  // namespace hierparse
