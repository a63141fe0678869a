// CPU kernel of hierparse::multilevel_ohem_cross_entropy (ohem.h): the selection of the kept pixels,
// with std::nth_element over the valid pixels' target probabilities (skipped when more than the
// floor's rank lie below the threshold, which is then the cut).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <utility>
#include <type_traits>
#include <vector>

#include "ohem.h"

namespace hierparse {
namespace {

constexpr int64_t kChunkPixels = int64_t(1) << 15;  // pixels of one task of the two passes

// One level's pixels and where its selection stands.
template <typename scalar_t, typename label_t>
struct LevelSelection {
  const scalar_t* probability;
  const int32_t* valid;  // the level's row of the valid table
  scalar_t* kept;
  int64_t count = 0, below = 0;  // valid pixels, and those below the threshold
  scalar_t cut = 0;

  bool scored(const label_t* labels, int64_t p) const { return valid[static_cast<int64_t>(labels[p])] != 0; }
};

// Pass 1 over pixels [begin, end) of a level: adds its valid pixels and those below the threshold.
template <typename scalar_t, typename label_t>
void count_chunk(const LevelSelection<scalar_t, label_t>& level, const label_t* labels, int64_t begin, int64_t end,
                 scalar_t threshold, int64_t* count, int64_t* below) {
  int64_t valid = 0, under = 0;  // locals: the stores through `labels` (uint8) could alias the totals
  for (int64_t p = begin; p < end; ++p) {
    const bool scored = level.scored(labels, p);
    valid += scored;
    under += scored && level.probability[p] < threshold;
  }
  *count = valid;
  *below = under;
}

// The floor of a level whose floor may lie at or above the threshold: nth_element over the valid
// probabilities' bits (non-negative floats order as their bit patterns, NaN last as in torch's
// kthvalue and in the CUDA radix select).
template <typename scalar_t, typename label_t>
scalar_t floor_of(const LevelSelection<scalar_t, label_t>& level, const label_t* labels, int64_t num_pixels,
                  int64_t rank) {
  using bits_t = std::conditional_t<sizeof(scalar_t) == 8, uint64_t, uint32_t>;
  std::vector<bits_t> bits(level.count);
  for (int64_t p = 0, i = 0; p < num_pixels; ++p)
    if (level.scored(labels, p)) std::memcpy(&bits[i++], level.probability + p, sizeof(bits_t));
  std::nth_element(bits.begin(), bits.begin() + rank, bits.end());
  scalar_t floor;
  std::memcpy(&floor, &bits[rank], sizeof(floor));
  return floor;
}

// Pass 2 over pixels [begin, end) of a level: writes kept (1 or 0) and returns how many are kept.
template <typename scalar_t, typename label_t>
int64_t mask_chunk(const LevelSelection<scalar_t, label_t>& level, const label_t* labels, int64_t begin, int64_t end) {
  int64_t kept = 0;
  for (int64_t p = begin; p < end; ++p) {
    const bool keep = level.scored(labels, p) && level.probability[p] < level.cut;
    level.kept[p] = keep;
    kept += keep;
  }
  return kept;
}

// Both passes run as (level, chunk of kChunkPixels) tasks over the threads, the floors level by
// level over the threads; each level's counts are summed in chunk order (the same for any thread count).
template <typename scalar_t, typename label_t>
void keep_levels(std::vector<LevelSelection<scalar_t, label_t>>& levels, const label_t* labels, int64_t num_pixels,
                 int64_t N, scalar_t threshold, int64_t min_kept, int64_t* kept_counts) {
  const int64_t L = static_cast<int64_t>(levels.size());
  const int64_t chunks = std::max<int64_t>(1, (num_pixels + kChunkPixels - 1) / kChunkPixels);
  auto chunk_range = [&](int64_t task) {
    const int64_t begin = (task % chunks) * kChunkPixels;
    return std::pair<int64_t, int64_t>(begin, std::min(num_pixels, begin + kChunkPixels));
  };
  std::vector<int64_t> counts(L * chunks), below(L * chunks), kept(L * chunks);
  at::parallel_for(0, L * chunks, 1, [&](int64_t first, int64_t last) {
    for (int64_t task = first; task < last; ++task) {
      const auto [begin, end] = chunk_range(task);
      count_chunk(levels[task / chunks], labels, begin, end, threshold, &counts[task], &below[task]);
    }
  });
  for (int64_t l = 0; l < L; ++l) {
    for (int64_t c = 0; c < chunks; ++c) levels[l].count += counts[l * chunks + c], levels[l].below += below[l * chunks + c];
    levels[l].cut = threshold;  // without valid pixels the mask is empty whatever the cut
  }
  at::parallel_for(0, L, 1, [&](int64_t first, int64_t last) {
    for (int64_t l = first; l < last; ++l) {
      auto& level = levels[l];
      if (level.count == 0) continue;
      const int64_t rank = ohem_floor_rank(min_kept, N, level.count);
      if (level.below > rank) continue;  // more than rank below the threshold: the floor is under it
      const scalar_t floor = floor_of(level, labels, num_pixels, rank);
      level.cut = floor < threshold ? threshold : floor;  // torch.clamp(floor, min=threshold)
    }
  });
  at::parallel_for(0, L * chunks, 1, [&](int64_t first, int64_t last) {
    for (int64_t task = first; task < last; ++task) {
      const auto [begin, end] = chunk_range(task);
      kept[task] = mask_chunk(levels[task / chunks], labels, begin, end);
    }
  });
  for (int64_t l = 0; l < L; ++l)
    kept_counts[l] = std::accumulate(kept.begin() + l * chunks, kept.begin() + (l + 1) * chunks, int64_t(0));
}

std::tuple<at::Tensor, at::Tensor> ohem_keep_cpu(const at::Tensor& probability, const at::Tensor& labels,
                                                 const at::Tensor& valid_table, double threshold, int64_t min_kept) {
  const at::Tensor contiguous_labels = labels.contiguous();
  at::Tensor kept = at::empty_like(probability);
  const int64_t L = probability.size(0), N = labels.size(0), num_pixels = labels.numel(), K = valid_table.size(1);
  at::Tensor counts = at::empty({L}, at::kLong);
  AT_DISPATCH_FLOATING_TYPES(probability.scalar_type(), "hierparse_ohem_keep_cpu", [&] {
    using probability_t = scalar_t;
    AT_DISPATCH_INTEGRAL_TYPES(contiguous_labels.scalar_type(), "hierparse_ohem_keep_cpu_labels", [&] {
      std::vector<LevelSelection<probability_t, scalar_t>> levels;
      for (int64_t l = 0; l < L; ++l)
        levels.push_back({probability.const_data_ptr<probability_t>() + l * num_pixels,
                          valid_table.const_data_ptr<int32_t>() + l * K, kept.data_ptr<probability_t>() + l * num_pixels});
      keep_levels(levels, contiguous_labels.const_data_ptr<scalar_t>(), num_pixels, N,
                  static_cast<probability_t>(threshold), min_kept, counts.data_ptr<int64_t>());
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
