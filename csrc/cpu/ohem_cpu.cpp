// CPU kernel of hierparse::multilevel_ohem_cross_entropy (ohem.h): the selection of the kept pixels,
// level by level, with std::nth_element over the valid pixels' target probabilities (skipped when
// more than the floor's rank lie below the threshold, which is then the cut).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "ohem.h"

namespace hierparse {
namespace {

constexpr int64_t kChunkPixels = int64_t(1) << 15;  // pixels per thread task

// kept[p] (1 or 0) of one level; returns how many are kept. Two passes in chunks over the threads (the valid
// pixels, those below the threshold; then the mask and its count), and between them, only when the
// floor may lie at or above the threshold, nth_element over the valid pixels' probabilities.
template <typename scalar_t, typename label_t>
int64_t keep_level(const scalar_t* probability, const label_t* labels, const int32_t* valid, int64_t num_pixels,
                int64_t N, scalar_t threshold, int64_t min_kept, scalar_t* kept) {
  const int64_t chunks = (num_pixels + kChunkPixels - 1) / kChunkPixels;
  std::vector<int64_t> valid_counts(chunks, 0), below_counts(chunks, 0);
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      for (int64_t p = c * kChunkPixels; p < std::min(num_pixels, (c + 1) * kChunkPixels); ++p) {
        const bool scored = valid[static_cast<int64_t>(labels[p])] != 0;
        valid_counts[c] += scored;
        below_counts[c] += scored && probability[p] < threshold;
      }
    }
  });
  const int64_t count = std::accumulate(valid_counts.begin(), valid_counts.end(), int64_t(0));
  const int64_t below = std::accumulate(below_counts.begin(), below_counts.end(), int64_t(0));
  scalar_t cut = threshold;  // without valid pixels the mask is empty whatever the cut
  if (count > 0 && below <= ohem_floor_rank(min_kept, N, count)) {
    // the floor lies at or above the threshold: find it (NaN sorts last, as in torch)
    const int64_t rank = ohem_floor_rank(min_kept, N, count);
    std::vector<scalar_t> values;
    values.reserve(count);
    for (int64_t p = 0; p < num_pixels; ++p)
      if (valid[static_cast<int64_t>(labels[p])]) values.push_back(probability[p]);
    auto nan_last = [](scalar_t a, scalar_t b) { return a < b || (!std::isnan(a) && std::isnan(b)); };
    std::nth_element(values.begin(), values.begin() + rank, values.end(), nan_last);
    cut = values[rank] < threshold ? threshold : values[rank];  // torch.clamp(floor, min=threshold)
  }
  std::vector<int64_t> kept_counts(chunks, 0);
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      for (int64_t p = c * kChunkPixels; p < std::min(num_pixels, (c + 1) * kChunkPixels); ++p) {
        const bool keep = valid[static_cast<int64_t>(labels[p])] && probability[p] < cut;
        kept[p] = keep;
        kept_counts[c] += keep;
      }
    }
  });
  return std::accumulate(kept_counts.begin(), kept_counts.end(), int64_t(0));
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
      for (int64_t l = 0; l < L; ++l)
        counts.data_ptr<int64_t>()[l] = keep_level(p + l * num_pixels, raw, valid_table.const_data_ptr<int32_t>() + l * K, num_pixels, N,
                   static_cast<probability_t>(threshold), min_kept, kept.data_ptr<probability_t>() + l * num_pixels);
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
