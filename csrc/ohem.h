// Hard-pixel mining (OHEM) inside one op call, shared by the CPU and CUDA backends:
// hierparse::multilevel_ohem_cross_entropy.
//
// Per level, a valid pixel is kept when the softmax probability of its target (the summed
// probability of a class set, weighed by its member weights) is below max(threshold, p_k), where p_k
// is the rank-th smallest target probability of the level's valid pixels and
// rank = min(min_kept * N, valid - 1) (ohem_floor_rank); the level's loss is the mean per-pixel loss
// over the kept pixels (0 when none is kept). Three steps, none synchronising beyond what the
// cross-entropy op does:
//   1. the fused cross-entropy, reduction "none" and no gradient, plain softmax: each pixel's target
//      negative log-probability; exp(-nll) is its target probability (the same tensor op as the
//      Python OHEM it replaces, so the same bits);
//   2. the backend's selection (OhemKeep: a selection, never a full sort) marks the kept pixels;
//   3. the fused cross-entropy again, reduction "none", with the class weights, label smoothing and
//      level weights, each pixel's gradient weighed by kept / kept count before it is written (or
//      scattered to low resolution), so the op returns the final gradients and its backward pass
//      only multiplies them by the incoming per-level gradient.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cstdint>
#include <limits>
#include <string>
#include <tuple>
#include <vector>

#include "host_device.h"
#include "to_device.h"

namespace hierparse {

// The rank (from 0, in ascending order) of a level's floor probability among its `valid` pixels
// (valid > 0): min(min_kept * N, valid - 1), without overflowing.
HP_HOST_DEVICE int64_t ohem_floor_rank(int64_t min_kept, int64_t N, int64_t valid) {
  if (N > 0 && min_kept > (valid - 1) / N) return valid - 1;
  const int64_t rank = min_kept * N;
  return rank < valid - 1 ? rank : valid - 1;
}

// A backend's selection: kept [L, N, H, W] (1 where kept, else 0, in the probabilities' type) and each
// level's kept count (int64 [L]) from the
// target probabilities [L, N, H, W] (float or double, contiguous), the labels [N, H, W] (raw ids
// already checked against the table) and valid_table int32 [L, K] (1 where a level scores a raw
// id), on one device.
using OhemKeep = std::tuple<at::Tensor, at::Tensor> (*)(const at::Tensor& probability, const at::Tensor& labels,
                                                        const at::Tensor& valid_table, double threshold,
                                                        int64_t min_kept);

using CrossEntropyOp = std::tuple<at::Tensor, std::vector<at::Tensor>>(
    at::TensorList, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, at::ArrayRef<double>,
    double, int64_t, int64_t, bool, bool, const std::optional<at::Tensor>&, const std::optional<at::Tensor>&);

// multilevel_ohem_cross_entropy of the library `library` (hierparse, or hierparse_emulated for the
// CUDA emulation), whose multilevel_cross_entropy it calls, with the backend's selection `keep`.
inline std::tuple<at::Tensor, std::vector<at::Tensor>> ohem_cross_entropy(
    const char* library, OhemKeep keep, at::TensorList logits, const at::Tensor& labels, const at::Tensor& table,
    const std::optional<at::Tensor>& class_weights, at::ArrayRef<double> level_weights, double label_smoothing,
    int64_t ignore_index, bool compute_grad, bool align_corners, const std::optional<at::Tensor>& set_members,
    double threshold, int64_t min_kept) {
  TORCH_CHECK_VALUE(threshold > 0 && threshold <= 1, "multilevel_ohem_cross_entropy: threshold must be a "
                    "probability in (0, 1], got ", threshold);
  TORCH_CHECK_VALUE(min_kept >= 0, "multilevel_ohem_cross_entropy: min_kept must be >= 0, got ", min_kept);
  const auto cross_entropy = c10::Dispatcher::singleton()
                                 .findSchemaOrThrow((std::string(library) + "::multilevel_cross_entropy").c_str(), "")
                                 .typed<CrossEntropyOp>();
  constexpr int64_t kNone = 0;  // reduction "none"
  const int64_t L = static_cast<int64_t>(logits.size());
  const std::vector<double> unweighted(L, 1.0);
  const at::Tensor nll = std::get<0>(cross_entropy.call(logits, labels, table, std::nullopt, unweighted, 0.0,
                                                         ignore_index, kNone, false, align_corners, set_members,
                                                         std::nullopt));
  const at::Tensor valid_table = on_device(table.ne(ignore_index).to(at::kInt).contiguous(), labels.device());
  const auto [kept, kept_counts] = keep(nll.neg().exp_(), labels, valid_table, threshold, min_kept);
  const at::Tensor counts = kept_counts.clamp_min(1);
  const at::Tensor grad_weights = kept / counts.view({L, 1, 1, 1});
  auto [per_pixel, grads] =
      cross_entropy.call(logits, labels, table, class_weights, level_weights, label_smoothing, ignore_index, kNone,
                         compute_grad, align_corners, set_members,
                         compute_grad ? std::optional<at::Tensor>(grad_weights) : std::nullopt);
  return {(per_pixel * kept).flatten(1).sum(1) / counts, grads};
}

}  // namespace hierparse
