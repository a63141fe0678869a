// CUDA kernel of hierparse::tree_min_loss.
//
// Same semantics as csrc/cpu/tree_min_cpu.cpp, and the same per-pixel arithmetic: both call the
// HP_HOST_DEVICE functions of tree_min.h.
//
// 1. Host checks: plan_tree_min (every argument), then this kernel's bounds (at most kMaxNodes nodes,
//    the classes of all levels, and kMaxLevels levels); no copy to the host but the label pre-pass's. Label pre-pass (label_stats of common.cuh):
//    check_label_range raises on raw ids outside the table before the main kernel runs, and the
//    histogram gives the number of valid pixels (the "mean" divisor).
// 2. Main kernel, one thread per pixel (grid-stride, 64-bit indices, any logits strides). The class
//    tree's parent array is copied to shared memory; the raw label is read once, as its own integer
//    type. For a valid pixel the thread loads the logits of all nodes into per-thread scratch arrays
//    of kNodes entries, the tree's node count rounded up to 32, 64 or 256 (local memory: hi, lo and
//    grad in the compute type, arg_hi and arg_lo as uint8 node indices; for 32 nodes 448 bytes a
//    thread in float, 832 in double; for 256, 3.5 and 6.5 KiB, which the driver reserves for every
//    resident thread), runs tree_limits
//    and tree_min_terms, and writes each level's loss ("none": scaled, to the [L, N, H, W] map) and,
//    when asked, the gradients of all levels (zero at invalid pixels).
// 3. Loss sums ("mean", "sum") are deterministic, as in multilevel_ce_kernels.cuh (common.cuh): per-thread
//    double sums, kept in dynamic shared memory ([L, kThreads]), reduced per block in a fixed tree into
//    a [L, blocks] buffer, then summed per level in a fixed order; no floating-point atomics.
//
// Compiled by tree_min_cuda.cu for the GPU and by csrc/emulate/tree_min.cpp for the CPU emulation
// (backend.cuh).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include <vector>

#include "common.cuh"
#include "tree_min.h"
#include "to_device.h"
#include "tree_min_host.h"

namespace hierparse {
namespace {

constexpr int kMaxNodes = 256;  // nodes of the class tree (classes of all levels): per-thread scratch
constexpr int kMaxLevels = 16;  // levels: per-level arguments and per-thread loss sums
using node_t = uint8_t;         // a node index in the scratch arrays
static_assert(kMaxNodes <= 256, "node_t must hold every node index");

template <typename scalar_t, typename acc_t>
struct LevelArgs {
  const scalar_t* logits;
  scalar_t* grad;      // nullptr without gradients
  int64_t xs[4];       // logits strides (N, C, H, W)
  int64_t gs[4];       // gradient strides
  acc_t grad_scale;    // gradient multiplier: level weight (/ valid pixels for "mean")
  double loss_scale;   // loss multiplier: level weight (/ valid pixels for "mean")
};

template <typename scalar_t, typename acc_t>
struct KernelArgs {
  LevelArgs<scalar_t, acc_t> levels[kMaxLevels];
  int32_t first[kMaxLevels + 1];  // the first node of each level, then the number of nodes
  int num_levels;
  acc_t gamma;
  const int32_t* parent;  // [V] parent node, -1 at level 0
  const int32_t* table;   // [L, K] class of each raw id at each level, -1 where ignored
  const int32_t* valid;   // [K] 1 when no level ignores the raw id
  const uint8_t* in_set;  // class sets (tree_min_terms): 1 where a class is a member, or nullptr without sets
  int32_t set_first[kMaxLevels];  // where each level's sets start in in_set
  int64_t K;
  int64_t num_pixels, HW, W;
  int64_t ls[3];          // label strides (N, H, W)
  acc_t* loss_map;        // [L, N, H, W] contiguous for reduction "none", else nullptr
  const acc_t* grad_map;  // incoming gradient [L, N, H, W] for "none" with grad_weights, else nullptr
  int64_t ms[4];          // strides of grad_map
  const acc_t* level_grad_weights;  // incoming gradient [L] for "mean" and "sum", else nullptr
  int64_t level_grad_stride;
  double* block_sums;     // [L, gridDim.x] loss sums of each block, or nullptr ("none")
};

template <typename scalar_t, typename acc_t, typename label_t, int kNodes>
__global__ void __launch_bounds__(kThreads)
    tree_min_kernel(const label_t* __restrict__ labels, const __grid_constant__ KernelArgs<scalar_t, acc_t> args) {
  HP_DYNAMIC_SHARED(double, thread_sums);  // [L, kThreads] when block_sums
  __shared__ int32_t parent[kNodes];
  __shared__ acc_t grad_scale[kMaxLevels];  // per level: its scale, times grad_weights[l] if given
  const int tid = threadIdx.x;
  const int L = args.num_levels;
  const int32_t V = args.first[L];
  const bool sums = args.block_sums != nullptr;
  const bool compute_grad = args.levels[0].grad != nullptr;
  for (int32_t v = tid; v < V; v += kThreads) parent[v] = args.parent[v];
  for (int l = tid; l < L; l += kThreads) {  // as on the CPU: the product in double, then rounded
    grad_scale[l] = args.level_grad_weights == nullptr
                        ? args.levels[l].grad_scale
                        : static_cast<acc_t>(args.levels[l].loss_scale *
                                             static_cast<double>(args.level_grad_weights[l * args.level_grad_stride]));
  }
  if (sums) {
    for (int l = 0; l < L; ++l) thread_sums[l * kThreads + tid] = 0.0;
  }
  __syncthreads();

  // Per-pixel scratch (local memory), valid for nodes 0..V-1 and levels 0..L-1.
  acc_t hi[kNodes], lo[kNodes], grad[kNodes];
  node_t arg_hi[kNodes], arg_lo[kNodes];
  int32_t target[kMaxLevels];
  acc_t weight[kMaxLevels], loss[kMaxLevels];

  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t p = static_cast<int64_t>(blockIdx.x) * kThreads + tid; p < args.num_pixels; p += stride) {
    const int64_t n = p / args.HW;
    const int64_t hw = p - n * args.HW;
    const int64_t h = hw / args.W;
    const int64_t w = hw - h * args.W;
    // Read once; ids were range-checked on the host.
    const int64_t raw = static_cast<int64_t>(labels[n * args.ls[0] + h * args.ls[1] + w * args.ls[2]]);
    const bool valid = args.valid[raw] != 0;

    if (valid) {
      for (int l = 0; l < L; ++l) {
        const LevelArgs<scalar_t, acc_t>& a = args.levels[l];
        const scalar_t* x = a.logits + n * a.xs[0] + h * a.xs[2] + w * a.xs[3];
        const int32_t first = args.first[l];
        const int32_t C = args.first[l + 1] - first;
        for (int32_t c = 0; c < C; ++c) hi[first + c] = static_cast<acc_t>(x[c * a.xs[1]]);
        weight[l] = grad_scale[l];
        if (args.grad_map != nullptr) {
          weight[l] *= args.grad_map[l * args.ms[0] + n * args.ms[1] + h * args.ms[2] + w * args.ms[3]];
        }
        target[l] = args.table[l * args.K + raw];
      }
      tree_limits(parent, V, hi, arg_hi, lo, arg_lo);
      if (compute_grad) {
        for (int32_t v = 0; v < V; ++v) grad[v] = acc_t(0);
      }
      tree_min_terms(static_cast<int32_t>(L), args.first, target, lo, arg_lo, hi, arg_hi, args.gamma, weight, loss,
                     compute_grad ? grad : nullptr, args.in_set, args.set_first);
    } else {
      for (int l = 0; l < L; ++l) loss[l] = acc_t(0);
    }

    for (int l = 0; l < L; ++l) {
      const LevelArgs<scalar_t, acc_t>& a = args.levels[l];
      if (sums) thread_sums[l * kThreads + tid] += static_cast<double>(loss[l]);
      if (args.loss_map != nullptr) {
        args.loss_map[l * args.num_pixels + p] = static_cast<acc_t>(static_cast<double>(loss[l]) * a.loss_scale);
      }
      if (compute_grad) {
        scalar_t* g = a.grad + n * a.gs[0] + h * a.gs[2] + w * a.gs[3];
        const int32_t first = args.first[l];
        const int32_t C = args.first[l + 1] - first;
        for (int32_t c = 0; c < C; ++c) g[c * a.gs[1]] = static_cast<scalar_t>(valid ? grad[first + c] : acc_t(0));
      }
    }
  }

  if (!sums) return;  // uniform over the grid: no divergent barrier below
  write_block_sums(thread_sums, L, args.block_sums);
}

template <typename scalar_t, typename label_t, int kNodes>
void launch(const TreePlan& tree, at::TensorList logits, const at::Tensor& labels,
            const std::vector<double>& loss_scales, at::Tensor& losses, std::vector<at::Tensor>& grads,
            bool compute_grad) {
  using acc_t = at::opmath_type<scalar_t>;
  const Plan& plan = tree.plan;
  const int L = static_cast<int>(plan.levels.size());
  const int64_t V = static_cast<int64_t>(tree.parent.size());
  const int64_t num_pixels = plan.N * plan.H * plan.W;
  const bool per_pixel = plan.reduction == Reduction::None;
  const at::Device device = logits[0].device();

  // The tree's parent array and the valid raw ids in one small int32 tensor on the device.
  std::vector<int32_t> host_tables(tree.parent);
  host_tables.insert(host_tables.end(), tree.valid.begin(), tree.valid.end());
  const at::Tensor tables = to_device(at::tensor(host_tables, at::kInt), device);
  const at::Tensor in_set =
      tree.in_set.empty() ? at::Tensor() : to_device(at::tensor(at::ArrayRef<uint8_t>(tree.in_set), at::kByte), device);

  const size_t shared_bytes = per_pixel ? 0 : static_cast<size_t>(L) * kThreads * sizeof(double);
  const auto kernel = tree_min_kernel<scalar_t, acc_t, label_t, kNodes>;
  const int64_t blocks = grid_size(kernel, num_pixels, shared_bytes);
  at::Tensor block_sums;
  if (!per_pixel) block_sums = at::empty({L, blocks}, labels.options().dtype(at::kDouble));

  KernelArgs<scalar_t, acc_t> args{};
  args.num_levels = L;
  for (int l = 0; l <= L; ++l) args.first[l] = tree.first[l];
  args.gamma = static_cast<acc_t>(tree.focal_gamma);
  args.parent = tables.const_data_ptr<int32_t>();
  args.table = plan.table.const_data_ptr<int32_t>();
  args.valid = tables.const_data_ptr<int32_t>() + V;
  args.in_set = in_set.defined() ? in_set.const_data_ptr<uint8_t>() : nullptr;
  for (size_t l = 0; l < tree.set_first.size(); ++l) args.set_first[l] = tree.set_first[l];
  args.K = plan.K;
  args.num_pixels = num_pixels;
  args.HW = plan.H * plan.W;
  args.W = plan.W;
  for (int d = 0; d < 3; ++d) args.ls[d] = labels.stride(d);
  args.loss_map = per_pixel ? losses.data_ptr<acc_t>() : nullptr;
  args.grad_map = per_pixel && tree.grad_weights.defined() ? tree.grad_weights.const_data_ptr<acc_t>() : nullptr;
  for (int d = 0; d < 4 && args.grad_map != nullptr; ++d) args.ms[d] = tree.grad_weights.stride(d);
  if (!per_pixel && tree.grad_weights.defined()) {
    args.level_grad_weights = tree.grad_weights.const_data_ptr<acc_t>();
    args.level_grad_stride = tree.grad_weights.stride(0);
  }
  args.block_sums = per_pixel ? nullptr : block_sums.data_ptr<double>();
  for (int l = 0; l < L; ++l) {
    LevelArgs<scalar_t, acc_t>& a = args.levels[l];
    a.logits = logits[l].const_data_ptr<scalar_t>();
    a.grad = compute_grad ? grads[l].data_ptr<scalar_t>() : nullptr;
    for (int d = 0; d < 4; ++d) {
      a.xs[d] = logits[l].stride(d);
      a.gs[d] = compute_grad ? grads[l].stride(d) : 0;
    }
    a.grad_scale = static_cast<acc_t>(loss_scales[l]);
    a.loss_scale = loss_scales[l];
  }
  launch_kernel(kernel, blocks, kThreads, shared_bytes, labels.const_data_ptr<label_t>(), args);

  if (!per_pixel) sum_level_blocks(block_sums, loss_scales, losses);
}

std::tuple<at::Tensor, std::vector<at::Tensor>> tree_min_loss_cuda(
    at::TensorList logits, const at::Tensor& labels, const at::Tensor& table, at::IntArrayRef parents,
    at::ArrayRef<double> level_weights, double focal_gamma, int64_t ignore_index, int64_t reduction,
    bool compute_grad, const c10::optional<at::Tensor>& set_members, const c10::optional<at::Tensor>& grad_weights) {
  // Checks every argument first (all tensors on one device, which is a CUDA device here).
  const TreePlan tree = plan_tree_min(logits, labels, table, parents, level_weights, focal_gamma, ignore_index,
                                      reduction, set_members, grad_weights);
  const Plan& plan = tree.plan;
  TORCH_CHECK_VALUE(on_kernel_device(logits[0]), "tree_min_loss: the CUDA kernel got level 0 logits on ", logits[0].device());
  const int64_t L = static_cast<int64_t>(plan.levels.size());
  const int64_t V = static_cast<int64_t>(tree.parent.size());
  TORCH_CHECK_NOT_IMPLEMENTED(V <= kMaxNodes, "tree_min_loss: the class tree has ", V,
                              " nodes (classes of all levels), but the CUDA kernel handles at most ", kMaxNodes);
  TORCH_CHECK_NOT_IMPLEMENTED(L <= kMaxLevels, "tree_min_loss: got ", L,
                              " levels, but the CUDA kernel handles at most ", kMaxLevels);
  const KernelDeviceGuard guard(logits[0].device());

  // Raises on raw ids outside the table before the main kernel runs; counts the valid pixels.
  const at::Tensor stats = label_stats(labels, plan.K);
  const int64_t* s = stats.const_data_ptr<int64_t>();
  check_label_range(s[plan.K], s[plan.K + 1], plan.K, "tree_min_loss");
  check_scorable("tree_min_loss", plan, s);
  int64_t num_valid = 0;
  for (int64_t k = 0; k < plan.K; ++k) num_valid += tree.valid[k] ? s[k] : 0;

  // As on the CPU: "mean" divides by the valid pixels (none: loss 0 and gradient 0); grad_weights for
  // "mean" and "sum" are one number per level, folded into the gradient scale by the kernel (they
  // stay on the device).
  const bool per_pixel = plan.reduction == Reduction::None;
  std::vector<double> loss_scales;
  for (int64_t l = 0; l < L; ++l) {
    const double weight = plan.levels[l].level_weight;
    loss_scales.push_back(plan.reduction == Reduction::Mean ? (num_valid > 0 ? weight / num_valid : 0.0) : weight);
  }

  at::Tensor losses = allocate_losses(plan, logits[0]);
  std::vector<at::Tensor> grads = allocate_grads(logits, compute_grad);
  if (plan.N * plan.H * plan.W == 0) {
    if (!per_pixel) losses.zero_();
    return {losses, grads};
  }

  HP_DISPATCH_LOGIT_TYPES(logits[0].scalar_type(), "hierparse_tree_min_cuda", [&] {
    using logit_t = scalar_t;
    HP_DISPATCH_LABEL_TYPES(labels.scalar_type(), "hierparse_tree_min_cuda_labels", [&] {
      if (V <= 32) {
        launch<logit_t, scalar_t, 32>(tree, logits, labels, loss_scales, losses, grads, compute_grad);
      } else if (V <= 64) {
        launch<logit_t, scalar_t, 64>(tree, logits, labels, loss_scales, losses, grads, compute_grad);
      } else {
        launch<logit_t, scalar_t, kMaxNodes>(tree, logits, labels, loss_scales, losses, grads, compute_grad);
      }
    });
  });
  return {losses, grads};
}

}  // namespace

HP_REGISTER_CUDA_KERNELS(m) {
  m.impl("tree_min_loss", &tree_min_loss_cuda);
}

}  // namespace hierparse
