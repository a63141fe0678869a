// CPU kernel of hierparse::multilevel_ohem_cross_entropy (ohem.h): the selection of the kept pixels,
// the levels over the threads, with std::nth_element over the valid pixels' target probabilities
// (skipped when more than the floor's rank lie below the threshold, which is then the cut).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "ohem.h"

namespace hierparse {
namespace {

// kept[p] (1 or 0) of one level; returns how many are kept. A pass counting the valid pixels and
// those below the threshold; only when the floor may lie at or above the threshold, nth_element over
// the valid probabilities' bits (non-negative floats order as their bit patterns, NaN last as in
// torch, as in the CUDA radix select); a pass writing the mask.
template <typename scalar_t, typename label_t>
int64_t keep_level(const scalar_t* probability, const label_t* labels, const int32_t* valid, int64_t num_pixels,
                   int64_t N, scalar_t threshold, int64_t min_kept, scalar_t* kept) {
  using bits_t = std::conditional_t<sizeof(scalar_t) == 8, uint64_t, uint32_t>;
  int64_t count = 0, below = 0;
  for (int64_t p = 0; p < num_pixels; ++p) {
    const bool scored = valid[static_cast<int64_t>(labels[p])] != 0;
    count += scored;
    below += scored && probability[p] < threshold;
  }
  scalar_t cut = threshold;  // without valid pixels the mask is empty whatever the cut
  if (count > 0 && below <= ohem_floor_rank(min_kept, N, count)) {
    const int64_t rank = ohem_floor_rank(min_kept, N, count);
    std::vector<bits_t> bits(count);
    for (int64_t p = 0, i = 0; p < num_pixels; ++p)
      if (valid[static_cast<int64_t>(labels[p])]) std::memcpy(&bits[i++], probability + p, sizeof(bits_t));
    std::nth_element(bits.begin(), bits.begin() + rank, bits.end());
    scalar_t floor;
    std::memcpy(&floor, &bits[rank], sizeof(floor));
    cut = floor < threshold ? threshold : floor;  // torch.clamp(floor, min=threshold)
  }
  int64_t kept_count = 0;
  for (int64_t p = 0; p < num_pixels; ++p) {
    const bool keep = valid[static_cast<int64_t>(labels[p])] != 0 && probability[p] < cut;
    kept[p] = keep;
    kept_count += keep;
  }
  return kept_count;
}

std::tuple<at::Tensor, at::Tensor> ohem_keep_cpu(const at::Tensor& probability, const at::Tensor& labels,
                                                 const at::Tensor& valid_table, double threshold, int64_t min_kept) {
  const at::Tensor contiguous_labels = labels.contiguous();
  at::Tensor kept = at::empty_like(probability);
  const int64_t L = probability.size(0), N = labels.size(0), num_pixels = labels.numel(), K = valid_table.size(1);
  at::Tensor counts = at::empty({L}, at::kLong);
  AT_DISPATCH_FLOATING_TYPES(probability.scalar_type(), "hierparse_ohem_keep_cpu", [&] {
    using probability_t = scalar_t;
    const probability_t* p = probability.const_data_ptr<probability_t>();
    AT_DISPATCH_INTEGRAL_TYPES(contiguous_labels.scalar_type(), "hierparse_ohem_keep_cpu_labels", [&] {
      const scalar_t* raw = contiguous_labels.const_data_ptr<scalar_t>();
      const int32_t* valid = valid_table.const_data_ptr<int32_t>();
      probability_t* mask = kept.data_ptr<probability_t>();
      at::parallel_for(0, L, 1, [&](int64_t begin, int64_t end) {
        for (int64_t l = begin; l < end; ++l)
          counts.data_ptr<int64_t>()[l] = keep_level(p + l * num_pixels, raw, valid + l * K, num_pixels, N,
                                                     static_cast<probability_t>(threshold), min_kept,
                                                     mask + l * num_pixels);
      });
    });
  });
  return {kept, counts};
}

std::tuple<at::Tensor, std::vector<at::Tensor>> multilevel_ohem_cross_entropy_cpu(
    at::TensorList logits, const at::Tensor& labels, const at::Tensor& table,
    const std::optional<at::Tensor>& class_weights, at::ArrayRef<double> level_weights, double label_smoothing,
    int64_t ignore_index, bool compute_grad, bool align_corners, const std::optional<at::Tensor>& set_members,
    double threshold, int64_t min_kept) {
  return ohem_cross_entropy("hierparse", &ohem_keep_cpu, logits, labels, table, class_weights, level_weights,
                            label_smoothing, ignore_index, compute_grad, align_corners, set_members, threshold,
                            min_kept);
}

}  // namespace

TORCH_LIBRARY_IMPL(hierparse, CPU, m) {
  m.impl("multilevel_ohem_cross_entropy", &multilevel_ohem_cross_entropy_cpu);
}

}  // namespace hierparse
