// Host side of the gather algorithm (upsampled_ce.h), shared by the CUDA kernel and its CPU twin:
// the arguments of one level's work items from the op's plan and tensors.
#pragma once

#include <ATen/ATen.h>

#include "multilevel_ce_host.h"
#include "upsampled_ce.h"

namespace hierparse {

// Whether level l's logits are smaller than the labels (upsampled inside the op).
inline bool is_upsampled(const Plan& plan, size_t l) {
  return plan.levels[l].h != plan.H || plan.levels[l].w != plan.W;
}

// Level l's work-item arguments. grad: its gradient (undefined without); losses: the op's output;
// grad_weights: the checked per-pixel weights [L, N, H, W] (undefined without).
template <typename scalar_t, typename acc_t, typename label_t>
UpsampledLevel<scalar_t, acc_t, label_t> upsampled_level(const Plan& plan, size_t l, const at::Tensor& logits,
                                                         const at::Tensor& labels, const at::Tensor& grad,
                                                         at::Tensor& losses, const at::Tensor& grad_weights) {
  const LevelPlan& lp = plan.levels[l];
  UpsampledLevel<scalar_t, acc_t, label_t> a{};
  a.logits = logits.const_data_ptr<scalar_t>();
  a.grad = grad.defined() ? grad.data_ptr<scalar_t>() : nullptr;
  for (int d = 0; d < 4; ++d) {
    a.xs[d] = logits.stride(d);
    a.gs[d] = grad.defined() ? grad.stride(d) : 0;
  }
  a.labels = labels.const_data_ptr<label_t>();
  for (int d = 0; d < 3; ++d) a.ls[d] = labels.stride(d);
  a.N = plan.N;
  a.C = lp.num_classes;
  a.h = lp.h;
  a.w = lp.w;
  a.H = plan.H;
  a.W = plan.W;
  a.rows = BilinearAxis<acc_t>::make(lp.h, plan.H, plan.align_corners);
  a.cols = BilinearAxis<acc_t>::make(lp.w, plan.W, plan.align_corners);
  a.table = plan.table.const_data_ptr<int32_t>() + static_cast<int64_t>(l) * plan.K;
  a.class_w = plan.class_weights.defined() ? plan.class_weights.const_data_ptr<float>() + lp.weight_offset : nullptr;
  a.sets = level_sets(plan, l);
  a.loss_map = plan.reduction == Reduction::None ? losses[l].data_ptr<acc_t>() : nullptr;
  a.grad_weights = grad_weights.defined() ? grad_weights[l].const_data_ptr<acc_t>() : nullptr;
  a.k = level_coefficients<acc_t>(plan, l);
  a.smoothing = plan.label_smoothing != 0.0;
  return a;
}

}  // namespace hierparse
