// CPU implementation of hierparse::tree_min_loss: argument checks and planning (tree_min_host.h), a
// pass over the labels for the raw-id range and the number of valid pixels, then threads over rows
// of pixels, each pixel's class tree walked in O(nodes) with its loss and gradient in one pass (the
// per-pixel math of tree_min.h, which the CUDA kernel runs too).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <numeric>
#include <vector>

#include "tree_min.h"
#include "tree_min_host.h"

namespace hierparse {
namespace {

// Threads take rows of pixels in runs of at least this many pixels (labels for the first pass).
constexpr int64_t kPixelsPerTask = 4096;
constexpr int64_t kLabelsPerTask = 65536;

struct LevelArgs {
  const void* logits;
  void* grad;  // nullptr without compute_grad
  int64_t xs[4], gs[4];
  double loss_scale, grad_scale;
};

struct Args {
  const TreePlan* tree;
  std::vector<LevelArgs> levels;
  const int32_t* table;     // int32 [L, K], -1 where ignored
  void* loss_map;           // [L, N, H, W] contiguous for reduction "none", else nullptr
  const void* grad_map;     // the incoming gradient [L, N, H, W] for "none" with grad_weights, else nullptr
  int64_t ms[4];            // strides of grad_map
  std::vector<double> row_sums;  // [L, N * H] summed losses of the valid pixels of each row
};

// One pixel at a time, with the per-pixel walk of tree_min.h: x_v for every node v, then the min over
// each node and its ancestors and the max over each node and its descendants (tree_limits), then each
// node's term, added to its level's loss, and its derivative, added to the gradient of the node the
// min or max came from (tree_min_terms).
template <typename scalar_t, typename label_t>
void run_rows(Args& a, const label_t* labels, bool compute_grad, int64_t row_begin, int64_t row_end) {
  using acc_t = at::opmath_type<scalar_t>;
  const TreePlan& tree = *a.tree;
  const Plan& plan = tree.plan;
  const int64_t L = static_cast<int64_t>(plan.levels.size()), V = static_cast<int64_t>(tree.parent.size());
  const int64_t H = plan.H, W = plan.W, rows = plan.N * plan.H;
  const acc_t gamma = static_cast<acc_t>(tree.focal_gamma);
  std::vector<acc_t> lo(V), hi(V), grad(V, acc_t(0)), loss(L), weight(L);
  std::vector<int32_t> arg_lo(V), arg_hi(V), target(L);
  for (int64_t row = row_begin; row < row_end; ++row) {
    const int64_t n = row / H, h = row % H;
    for (int64_t w = 0; w < W; ++w) {
      const int64_t raw = static_cast<int64_t>(labels[row * W + w]);
      const bool valid = tree.valid[raw] != 0;
      std::fill(loss.begin(), loss.end(), acc_t(0));
      if (compute_grad) std::fill(grad.begin(), grad.end(), acc_t(0));
      if (valid) {
        for (int64_t l = 0; l < L; ++l) {
          const LevelArgs& lv = a.levels[l];
          const scalar_t* src = static_cast<const scalar_t*>(lv.logits) + n * lv.xs[0] + h * lv.xs[2] + w * lv.xs[3];
          acc_t* dst = hi.data() + plan.levels[l].weight_offset;
          for (int64_t c = 0; c < plan.levels[l].num_classes; ++c) dst[c] = static_cast<acc_t>(src[c * lv.xs[1]]);
          weight[l] = static_cast<acc_t>(lv.grad_scale);
          if (a.grad_map != nullptr)
            weight[l] *= static_cast<const acc_t*>(a.grad_map)[l * a.ms[0] + n * a.ms[1] + h * a.ms[2] + w * a.ms[3]];
          target[l] = a.table[l * plan.K + raw];
        }
        tree_limits(tree.parent.data(), static_cast<int32_t>(V), hi.data(), arg_hi.data(), lo.data(), arg_lo.data());
        tree_min_terms(static_cast<int32_t>(L), tree.first.data(), target.data(), lo.data(), arg_lo.data(), hi.data(),
                       arg_hi.data(), gamma, weight.data(), loss.data(), compute_grad ? grad.data() : nullptr,
                       tree.in_set.data(), tree.set_first.data());
      }
      for (int64_t l = 0; l < L; ++l) {
        if (a.loss_map != nullptr) {
          static_cast<acc_t*>(a.loss_map)[(l * rows + row) * W + w] =
              static_cast<acc_t>(loss[l] * a.levels[l].loss_scale);
        } else {
          a.row_sums[l * rows + row] += static_cast<double>(loss[l]);
        }
        if (!compute_grad) continue;
        const LevelArgs& lv = a.levels[l];
        scalar_t* dst = static_cast<scalar_t*>(lv.grad) + n * lv.gs[0] + h * lv.gs[2] + w * lv.gs[3];
        const acc_t* src = grad.data() + plan.levels[l].weight_offset;
        for (int64_t c = 0; c < plan.levels[l].num_classes; ++c) dst[c * lv.gs[1]] = static_cast<scalar_t>(src[c]);
      }
    }
  }
}

// Raises on raw ids outside the table or unscorable; returns the number of pixels that no level ignores.
template <typename label_t>
int64_t count_valid_pixels(const label_t* labels, const TreePlan& tree) {
  const int64_t rows = tree.plan.N * tree.plan.H, W = tree.plan.W, K = tree.plan.K;
  std::vector<int64_t> lo(rows, 0), hi(rows, 0), count(rows, 0), unscorable(rows, 0);
  const int64_t grain = std::max<int64_t>(1, kLabelsPerTask / std::max<int64_t>(W, 1));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      for (int64_t w = 0; w < W; ++w) {
        const int64_t id = static_cast<int64_t>(labels[row * W + w]);
        lo[row] = std::min(lo[row], id);
        hi[row] = std::max(hi[row], id);
        if (id >= 0 && id < K) count[row] += tree.valid[id], unscorable[row] += tree.plan.unscorable_level[id] >= 0;
      }
    }
  });
  check_label_range(rows ? *std::min_element(lo.begin(), lo.end()) : 0,
                    rows ? *std::max_element(hi.begin(), hi.end()) : 0, K, "tree_min_loss");
  if (std::accumulate(unscorable.begin(), unscorable.end(), int64_t(0)) > 0) {  // the error path: count them all
    std::vector<int64_t> counts(K, 0);
    for (int64_t i = 0; i < rows * W; ++i) ++counts[static_cast<int64_t>(labels[i])];
    check_scorable("tree_min_loss", tree.plan, counts.data());
  }
  return std::accumulate(count.begin(), count.end(), int64_t(0));
}

std::tuple<at::Tensor, std::vector<at::Tensor>> tree_min_loss_cpu(
    at::TensorList logits, const at::Tensor& labels, const at::Tensor& table, at::IntArrayRef parents,
    at::ArrayRef<double> level_weights, double focal_gamma, int64_t ignore_index, int64_t reduction,
    bool compute_grad, const c10::optional<at::Tensor>& set_members, const c10::optional<at::Tensor>& grad_weights) {
  const TreePlan tree = plan_tree_min(logits, labels, table, parents, level_weights, focal_gamma, ignore_index,
                                      reduction, set_members, grad_weights);
  const Plan& plan = tree.plan;
  const int64_t L = static_cast<int64_t>(plan.levels.size()), rows = plan.N * plan.H;
  const at::Tensor contiguous_labels = labels.contiguous();
  int64_t num_valid = 0;
  AT_DISPATCH_INTEGRAL_TYPES(contiguous_labels.scalar_type(), "hierparse_tree_min_count", [&] {
    num_valid = count_valid_pixels(contiguous_labels.data_ptr<scalar_t>(), tree);
  });

  at::Tensor losses = allocate_losses(plan, logits[0]);
  const std::vector<at::Tensor> grads = allocate_grads(logits, compute_grad);
  const bool per_pixel = plan.reduction == Reduction::None;
  const at::Tensor level_grad_weights =
      tree.grad_weights.defined() && !per_pixel ? tree.grad_weights.to(at::kDouble) : at::Tensor();
  Args args{};
  args.tree = &tree;
  args.table = plan.table.data_ptr<int32_t>();
  args.loss_map = per_pixel ? losses.data_ptr() : nullptr;
  args.grad_map = per_pixel && tree.grad_weights.defined() ? tree.grad_weights.data_ptr() : nullptr;
  for (int d = 0; d < 4 && args.grad_map != nullptr; ++d) args.ms[d] = tree.grad_weights.stride(d);
  args.row_sums.assign(per_pixel ? 0 : L * rows, 0.0);
  for (int64_t l = 0; l < L; ++l) {
    LevelArgs lv{};
    lv.logits = logits[l].data_ptr();
    lv.grad = compute_grad ? grads[l].data_ptr() : nullptr;
    for (int d = 0; d < 4; ++d) {
      lv.xs[d] = logits[l].stride(d);
      lv.gs[d] = compute_grad ? grads[l].stride(d) : 0;
    }
    // "mean" divides by the valid pixels (none: loss 0 and gradient 0); grad_weights for "mean" and
    // "sum" are one number per level, folded in here.
    const double weight = plan.levels[l].level_weight;
    lv.loss_scale = plan.reduction == Reduction::Mean ? (num_valid > 0 ? weight / num_valid : 0.0) : weight;
    lv.grad_scale = lv.loss_scale * (level_grad_weights.defined() ? level_grad_weights[l].item<double>() : 1.0);
    args.levels.push_back(lv);
  }

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits[0].scalar_type(), "hierparse_tree_min_cpu", [&] {
    using logit_t = scalar_t;
    AT_DISPATCH_INTEGRAL_TYPES(contiguous_labels.scalar_type(), "hierparse_tree_min_cpu_labels", [&] {
      const scalar_t* label_ptr = contiguous_labels.data_ptr<scalar_t>();
      const int64_t grain = std::max<int64_t>(1, kPixelsPerTask / std::max<int64_t>(plan.W, 1));
      at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
        run_rows<logit_t, scalar_t>(args, label_ptr, compute_grad, begin, end);
      });
    });
  });

  if (!per_pixel) {
    std::vector<double> scales;
    for (const auto& level : args.levels) scales.push_back(level.loss_scale);
    write_level_totals(losses, args.row_sums.data(), rows, scales);
  }
  return {losses, grads};
}

}  // namespace

TORCH_LIBRARY_IMPL(hierparse, CPU, m) {
  m.impl("tree_min_loss", &tree_min_loss_cpu);
}

}  // namespace hierparse
