// CUDA kernel of hierparse::multilevel_cross_entropy.
//
// Same semantics as csrc/cpu/multilevel_ce_cpu.cpp, and the same per-pixel arithmetic: both call
// the HP_HOST_DEVICE functions of multilevel_ce.h.
//
// 1. Label pre-pass (label_stats of common.cuh): min, max and histogram over 0..K-1 of the raw
//    label ids; one [K + 2] int64 copy to the host, where check_label_range raises on ids outside
//    the table (before the main kernel runs) and set_level_scales derives each level's "mean" divisor.
// 2. Main kernel, one thread per pixel (grid-stride, 64-bit indices). Consecutive threads take
//    consecutive w, so NCHW logits are read coalesced; any strides (channels_last) are honoured.
//    Each pixel's raw label is read once and looked up for every level of the launch (up to
//    kMaxLevels levels per launch, passed by value; more levels take more launches). Per level:
//    pass 1 max over classes, pass 2 exp-sum (and the weighted d-sum with label smoothing), pass 3
//    the loss and, when asked, the gradients. Passes 2 and 3 re-read the pixel's logits, which
//    the first pass has just brought into L1/L2.
// 3. Levels smaller than the labels (upsampled inside the op) take the gather kernel instead, one
//    launch per level: one thread per low-resolution pixel and chunk of classes, which recomputes
//    the full-resolution pixels it is a bilinear source of and sums their gradients in registers
//    (upsampled_ce.h, whose arithmetic the CPU tests run with HIERPARSE_CPU_UPSAMPLING=gather). No
//    full-resolution tensor exists and no gradient is added atomically.
// 4. Loss sums are deterministic (common.cuh): each thread accumulates its pixels in double, each
//    block reduces its threads in a fixed tree into a per-launch [levels, blocks] buffer (no
//    floating-point atomics), the launches' rows are gathered into one [L, blocks] buffer (zeros
//    past a launch's blocks), and a second tiny kernel sums each level's row in a fixed order and
//    multiplies by loss_scale. Grid sizes depend only on the device and the work size, so the same
//    inputs on the same device give bitwise identical losses and gradients.
//
// Compiled by multilevel_ce_cuda.cu for the GPU and by csrc/emulate/multilevel_ce.cpp for the CPU
// emulation (backend.cuh).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "common.cuh"
#include "multilevel_ce.h"
#include "multilevel_ce_host.h"
#include "upsampled_ce_host.h"

namespace hierparse {
namespace {

constexpr int kMaxLevels = 8;    // levels handled by one launch of the main kernel

// ---------------------------------------------------------------------------------------------
// Main kernel.

template <typename scalar_t, typename acc_t>
struct LevelArgs {
  const scalar_t* logits;
  scalar_t* grad;           // nullptr without gradients
  int64_t C;
  int64_t xs[4];            // logits strides (N, C, H, W)
  int64_t gs[4];            // gradient strides
  const int32_t* table;     // row of K entries, -1 = ignored
  const float* class_w;     // C weights or nullptr (all 1)
  LevelSets sets;           // class sets: table entries C + s (multilevel_ce.h)
  acc_t* loss_map;          // [N, H, W] in the compute type for reduction "none", else nullptr
  LevelCoefficients<acc_t> k;
};

template <typename scalar_t, typename acc_t>
struct KernelArgs {
  LevelArgs<scalar_t, acc_t> levels[kMaxLevels];
  int num_levels;  // levels used in this launch, 1..kMaxLevels
  bool smoothing;
  int64_t num_pixels, HW, W;
  int64_t ls[3];       // label strides (N, H, W)
  double* block_sums;  // [num_levels, gridDim.x] loss sums of each block, or nullptr ("none")
};

template <typename scalar_t, typename acc_t, typename label_t>
__global__ void __launch_bounds__(kThreads)
    multilevel_ce_kernel(const label_t* __restrict__ labels,
                         const __grid_constant__ KernelArgs<scalar_t, acc_t> args) {
  __shared__ double thread_sums[kMaxLevels][kThreads];
  const int tid = threadIdx.x;
  const int L = args.num_levels;
  for (int l = 0; l < L; ++l) thread_sums[l][tid] = 0.0;

  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t p = static_cast<int64_t>(blockIdx.x) * kThreads + tid; p < args.num_pixels; p += stride) {
    const int64_t n = p / args.HW;
    const int64_t hw = p - n * args.HW;
    const int64_t h = hw / args.W;
    const int64_t w = hw - h * args.W;
    const label_t raw = labels[n * args.ls[0] + h * args.ls[1] + w * args.ls[2]];  // read once

    for (int l = 0; l < L; ++l) {
      const LevelArgs<scalar_t, acc_t>& a = args.levels[l];
      const LevelCoefficients<acc_t>& k = a.k;
      const int64_t C = a.C;
      const int32_t target = lookup_target(raw, a.table);  // ids were range-checked on the host
      const bool valid = target >= 0;
      const scalar_t* x = a.logits + n * a.xs[0] + h * a.xs[2] + w * a.xs[3];
      const int64_t xc = a.xs[1];

      // Pass 1: the max over classes, and the target's logit (for a class set, its members' log-sum-exp).
      acc_t m = static_cast<acc_t>(x[0]);
      for (int64_t c = 1; c < C; ++c) m = max_value(m, static_cast<acc_t>(x[c * xc]));
      acc_t d_target = 0, w_target = 0;
      const double* set_log_row = nullptr;
      SetScore<acc_t> set{};
      if (target >= C) {
        set_log_row = a.sets.log_rows + (target - C) * C;
        set = score_set<acc_t>(a.sets, target - C, C, [&](int64_t c) { return static_cast<acc_t>(x[c * xc]); });
        d_target = set.log_sum() - m;
        w_target = static_cast<acc_t>(a.sets.weights[target - C]);
      } else if (valid) {
        d_target = static_cast<acc_t>(x[target * xc]) - m;
        w_target = a.class_w ? static_cast<acc_t>(a.class_w[target]) : acc_t(1);
      }

      // Pass 2: the sum of exponentials (and sum_c w_c d_c with label smoothing).
      acc_t sum = 0;
      acc_t weighted_d = 0;
      if (args.smoothing) {
        for (int64_t c = 0; c < C; ++c) {
          const acc_t d = static_cast<acc_t>(x[c * xc]) - m;
          const acc_t wc = a.class_w ? static_cast<acc_t>(a.class_w[c]) : acc_t(1);
          weighted_d += wc * d;
          sum += exp_nonpositive(d);
        }
      } else {
        for (int64_t c = 0; c < C; ++c) sum += exp_nonpositive(static_cast<acc_t>(x[c * xc]) - m);
      }

      const acc_t loss = valid ? pixel_loss(k, log_positive(sum), d_target, w_target, weighted_d) : acc_t(0);
      thread_sums[l][tid] += static_cast<double>(loss);
      if (a.loss_map != nullptr) a.loss_map[p] = loss * k.scale;  // "none": level-weighted loss

      // Pass 3: the gradients, already scaled.
      if (a.grad != nullptr) {
        const acc_t coeff = softmax_coefficient(k, w_target, acc_t(1) / sum, valid);
        scalar_t* g = a.grad + n * a.gs[0] + h * a.gs[2] + w * a.gs[3];
        const int64_t gc = a.gs[1];
        for (int64_t c = 0; c < C; ++c) {
          const acc_t x_c = static_cast<acc_t>(x[c * xc]);
          const acc_t e = exp_nonpositive(x_c - m);
          const acc_t wc = a.class_w ? static_cast<acc_t>(a.class_w[c]) : acc_t(1);
          acc_t grad = logit_gradient(k, e, coeff, wc, valid, target == c, w_target);
          if (set_log_row != nullptr) grad -= k.one_minus_eps * w_target * k.scale * set.share(x_c, set_log_row[c]);
          g[c * gc] = static_cast<scalar_t>(grad);
        }
      }
    }
  }

  if (args.block_sums == nullptr) return;  // uniform over the grid: no divergent barrier below
  write_block_sums(&thread_sums[0][0], L, args.block_sums);
}

// Runs the main kernel for the levels `full` (at the labels' size) and returns their block sums
// [levels, blocks] in the order of `full` (undefined for reduction "none").
template <typename scalar_t, typename acc_t, typename label_t>
at::Tensor launch_levels(const Plan& plan, at::TensorList logits, const at::Tensor& labels, at::Tensor& losses,
                         std::vector<at::Tensor>& grads, bool compute_grad, const std::vector<int64_t>& full) {
  const int64_t L = static_cast<int64_t>(full.size());
  const int64_t num_pixels = plan.N * plan.H * plan.W;
  const bool per_pixel = plan.reduction == Reduction::None;
  const int64_t blocks = grid_size(multilevel_ce_kernel<scalar_t, acc_t, label_t>, num_pixels, 0);
  at::Tensor block_sums;
  if (!per_pixel) block_sums = at::empty({L, blocks}, labels.options().dtype(at::kDouble));
  const float* weights = plan.class_weights.defined() ? plan.class_weights.const_data_ptr<float>() : nullptr;
  const int32_t* table = plan.table.const_data_ptr<int32_t>();
  const label_t* label_ptr = labels.const_data_ptr<label_t>();

  for (int64_t first = 0; first < L; first += kMaxLevels) {  // more than kMaxLevels: several launches
    KernelArgs<scalar_t, acc_t> args{};
    args.num_levels = static_cast<int>(std::min<int64_t>(kMaxLevels, L - first));
    args.smoothing = plan.label_smoothing != 0.0;
    args.num_pixels = num_pixels;
    args.HW = plan.H * plan.W;
    args.W = plan.W;
    for (int d = 0; d < 3; ++d) args.ls[d] = labels.stride(d);
    args.block_sums = per_pixel ? nullptr : block_sums.data_ptr<double>() + first * blocks;
    for (int i = 0; i < args.num_levels; ++i) {
      const int64_t l = full[first + i];
      const LevelPlan& lp = plan.levels[l];
      LevelArgs<scalar_t, acc_t>& a = args.levels[i];
      a.logits = logits[l].const_data_ptr<scalar_t>();
      a.grad = compute_grad ? grads[l].data_ptr<scalar_t>() : nullptr;
      a.C = lp.num_classes;
      for (int d = 0; d < 4; ++d) {
        a.xs[d] = logits[l].stride(d);
        a.gs[d] = compute_grad ? grads[l].stride(d) : 0;
      }
      a.table = table + l * plan.K;
      a.class_w = weights ? weights + lp.weight_offset : nullptr;
      a.sets = level_sets(plan, l);
      a.loss_map = per_pixel ? losses.data_ptr<acc_t>() + l * num_pixels : nullptr;
      a.k = level_coefficients<acc_t>(plan, l);
    }
    launch_kernel(multilevel_ce_kernel<scalar_t, acc_t, label_t>, blocks, kThreads, 0, label_ptr, args);
  }
  return block_sums;
}

// ---------------------------------------------------------------------------------------------
// Gather kernel of a level smaller than the labels (upsampled_ce.h), grid-stride over its work items.

template <typename scalar_t, typename acc_t, typename label_t>
__global__ void __launch_bounds__(kThreads)
    upsampled_ce_kernel(const __grid_constant__ UpsampledLevel<scalar_t, acc_t, label_t> level,
                        double* __restrict__ block_sums) {
  __shared__ double thread_sums[kThreads];
  const int64_t num_items = level.num_items();
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  double sum = 0;
  for (int64_t item = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; item < num_items; item += stride)
    sum += upsampled_item(level, item);
  thread_sums[threadIdx.x] = sum;
  if (block_sums == nullptr) return;  // uniform over the grid: no divergent barrier below
  write_block_sums(thread_sums, 1, block_sums);
}

// Runs the gather kernel for level l and returns its block sums [1, blocks] (undefined for "none").
template <typename scalar_t, typename acc_t, typename label_t>
at::Tensor launch_upsampled_level(const Plan& plan, int64_t l, const at::Tensor& logits, const at::Tensor& labels,
                                  at::Tensor& losses, const at::Tensor& grad, const at::Tensor& grad_weights) {
  const auto level = upsampled_level<scalar_t, acc_t, label_t>(plan, l, logits, labels, grad, losses, grad_weights);
  const int64_t blocks = grid_size(upsampled_ce_kernel<scalar_t, acc_t, label_t>, level.num_items(), 0);
  at::Tensor block_sums;
  if (plan.reduction != Reduction::None) block_sums = at::empty({1, blocks}, labels.options().dtype(at::kDouble));
  launch_kernel(upsampled_ce_kernel<scalar_t, acc_t, label_t>, blocks, kThreads, 0, level,
                block_sums.defined() ? block_sums.data_ptr<double>() : nullptr);
  return block_sums;
}

// Every level's losses from the launches' block sums: rows of `parts` belong to levels `rows_of`.
void write_losses(const Plan& plan, const std::vector<at::Tensor>& parts,
                  const std::vector<std::vector<int64_t>>& rows_of, at::Tensor& losses) {
  int64_t blocks = 1;
  for (const at::Tensor& part : parts) blocks = std::max(blocks, part.size(1));
  const int64_t L = static_cast<int64_t>(plan.levels.size());
  at::Tensor block_sums = at::zeros({L, blocks}, parts.front().options());  // zeros add nothing
  for (size_t p = 0; p < parts.size(); ++p)
    for (size_t r = 0; r < rows_of[p].size(); ++r)
      block_sums[rows_of[p][r]].narrow(0, 0, parts[p].size(1)).copy_(parts[p][r]);
  std::vector<double> scales;
  for (const LevelPlan& level : plan.levels) scales.push_back(level.loss_scale);
  sum_level_blocks(block_sums, scales, losses);
}

std::tuple<at::Tensor, std::vector<at::Tensor>> multilevel_cross_entropy_cuda(
    at::TensorList logits, const at::Tensor& labels, const at::Tensor& table,
    const c10::optional<at::Tensor>& class_weights, at::ArrayRef<double> level_weights,
    double label_smoothing, int64_t ignore_index, int64_t reduction, bool compute_grad, bool align_corners,
    const c10::optional<at::Tensor>& set_members, const c10::optional<at::Tensor>& grad_weights) {
  // Checks every argument first (all tensors on one device, which is a CUDA device here).
  Plan plan = plan_multilevel_ce(logits, labels, table, class_weights, level_weights, label_smoothing,
                                 ignore_index, reduction, align_corners, set_members);

  const at::Tensor pixel_grad_weights = checked_pixel_grad_weights(plan, grad_weights, logits[0].device());
  TORCH_CHECK_VALUE(on_kernel_device(logits[0]), "multilevel_cross_entropy: the CUDA kernel got level 0 logits on ",
                    logits[0].device());
  const KernelDeviceGuard guard(logits[0].device());

  const at::Tensor stats = label_stats(labels, plan.K);  // raises below before the main kernel runs
  const int64_t* s = stats.const_data_ptr<int64_t>();
  check_label_range(s[plan.K], s[plan.K + 1], plan.K);
  check_scorable("multilevel_cross_entropy", plan, s);
  set_level_scales(plan, stats.slice(0, 0, plan.K));

  at::Tensor losses = allocate_losses(plan, logits[0]);
  std::vector<at::Tensor> grads = allocate_grads(logits, compute_grad);
  if (plan.N * plan.H * plan.W == 0) {
    if (plan.reduction != Reduction::None) losses.zero_();
    return {losses, grads};
  }

  std::vector<int64_t> full, upsampled;
  for (size_t l = 0; l < plan.levels.size(); ++l) (is_upsampled(plan, l) ? upsampled : full).push_back(l);
  std::vector<at::Tensor> block_sums;  // per launch: rows of the levels in rows_of
  std::vector<std::vector<int64_t>> rows_of;
  HP_DISPATCH_LOGIT_TYPES(logits[0].scalar_type(),
                                  "hierparse_multilevel_ce_cuda", [&] {
    using logit_t = scalar_t;
    using acc_t = std::conditional_t<std::is_same_v<logit_t, double>, double, float>;
    HP_DISPATCH_LABEL_TYPES(labels.scalar_type(), "hierparse_multilevel_ce_cuda_labels", [&] {
      if (!full.empty()) {
        block_sums.push_back(launch_levels<logit_t, acc_t, scalar_t>(plan, logits, labels, losses, grads,
                                                                    compute_grad, full));
        rows_of.push_back(full);
      }
      for (const int64_t l : upsampled) {
        const at::Tensor grad = compute_grad ? grads[l] : at::Tensor();
        block_sums.push_back(launch_upsampled_level<logit_t, acc_t, scalar_t>(plan, l, logits[l], labels, losses,
                                                                              grad, pixel_grad_weights));
        rows_of.push_back({l});
      }
    });
  });
  if (plan.reduction != Reduction::None) write_losses(plan, block_sums, rows_of, losses);
  weigh_full_size_grads(plan, grads, pixel_grad_weights);
  return {losses, grads};
}

}  // namespace

HP_REGISTER_CUDA_KERNELS(m) {
  m.impl("multilevel_cross_entropy", &multilevel_cross_entropy_cuda);
}

}  // namespace hierparse
