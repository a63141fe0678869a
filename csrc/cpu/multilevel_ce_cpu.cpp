// CPU implementation of hierparse::multilevel_cross_entropy: argument checks and planning (shared
// with CUDA), the label histogram for the "mean" divisors, threads over tiles of pixels, and the
// choice of tile kernel for this CPU (tile_kernel_impl.h, compiled per instruction set).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "cpu/gradient_pool.h"
#include "cpu/tile_kernel.h"
#include "multilevel_ce_host.h"

namespace hierparse {
namespace {

using cpu::CpuCapability;
using cpu::kTile;

// Threads claim tiles in runs of this many from a shared counter (dynamic scheduling: on a shared
// or virtualised machine one thread may be slowed down, and the others then take its share).
constexpr int64_t kTilesPerClaim = 16;
// Gradients at least this large are written with streaming stores: they would not stay in the
// caches anyway, and streaming saves reading each gradient line before overwriting it.
constexpr int64_t kStreamingBytes = int64_t(16) << 20;

bool cpu_supports(const std::string& name) {
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
  if (name == "avx2") return cpu::capability_avx2().run_tile && __builtin_cpu_supports("avx2") &&
                             __builtin_cpu_supports("fma") && __builtin_cpu_supports("bmi2");
  if (name == "avx512")
    return cpu::capability_avx512().run_tile && __builtin_cpu_supports("avx512f") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512vl") && cpu_supports("avx2");
#endif
  return name == "default";
}

// The best tile kernel this CPU runs, or the one named by HIERPARSE_CPU_CAPABILITY
// (default, avx2, avx512), which must be supported.
CpuCapability select_capability() {
  const std::vector<CpuCapability> all{cpu::capability_avx512(), cpu::capability_avx2(),
                                       cpu::capability_default()};
  std::string supported;
  for (const CpuCapability& cap : all)
    if (cpu_supports(cap.name)) supported += supported.empty() ? cap.name : std::string(", ") + cap.name;
  const char* requested = std::getenv("HIERPARSE_CPU_CAPABILITY");
  for (const CpuCapability& cap : all) {
    if (requested != nullptr && *requested != '\0' ? std::string(requested) == cap.name
                                                    : cpu_supports(cap.name)) {
      TORCH_CHECK(cpu_supports(cap.name), "HIERPARSE_CPU_CAPABILITY=", requested,
                  " is not supported by this CPU or build; supported: ", supported);
      return cap;
    }
  }
  TORCH_CHECK(false, "HIERPARSE_CPU_CAPABILITY=", requested,
              " is not a capability; use one of default, avx2, avx512 (supported here: ", supported, ")");
}

const CpuCapability& capability() {
  static const CpuCapability selected = select_capability();
  return selected;
}

std::string cpu_capability() { return capability().name; }

// One thread's work: claims runs of tiles until none is left; for each tile copies its labels (any
// integer type) to int32 and runs the kernel. Which thread runs a tile does not change any result.
template <typename label_t>
void run_tiles(const cpu::KernelArgs& args, const label_t* labels, int64_t max_classes,
               std::atomic<int64_t>& next_tile) {
  const CpuCapability& cap = capability();
  const std::unique_ptr<char[]> scratch_memory(new char[max_classes * cpu::kScratchBytesPerClass + 64]);
  void* scratch = scratch_memory.get() + (64 - reinterpret_cast<uintptr_t>(scratch_memory.get()) % 64) % 64;
  int32_t raw[kTile] = {};  // past a short tile's end: 0 or an earlier tile's ids, valid and masked later
  for (int64_t begin; (begin = next_tile.fetch_add(kTilesPerClaim)) < args.num_tiles;) {
    const int64_t end = std::min(begin + kTilesPerClaim, args.num_tiles);
    for (int64_t tile = begin; tile < end; ++tile) {
      const int64_t row = tile / args.tiles_per_row;
      const int64_t w0 = (tile % args.tiles_per_row) * kTile;
      const int64_t P = std::min(kTile, args.W - w0);
      const label_t* src = labels + row * args.W + w0;
      for (int64_t p = 0; p < P; ++p) raw[p] = static_cast<int32_t>(src[p]);
      cap.run_tile(args, tile, raw, scratch);
    }
  }
  cap.fence();
}

cpu::LogitType logit_type(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat:
      return cpu::LogitType::Float;
    case at::kDouble:
      return cpu::LogitType::Double;
    case at::kHalf:
      return cpu::LogitType::Half;
    case at::kBFloat16:
      return cpu::LogitType::BFloat16;
    default:
      TORCH_CHECK(false, "hierparse: no CPU kernel for ", dtype, " logits");
  }
}

// Histogram of the label ids over 0..K-1 (for the "mean" divisor); raises on ids outside it.
at::Tensor label_counts(const at::Tensor& labels, int64_t K) {
  const int64_t numel = labels.numel();
  constexpr int64_t kChunks = 64;
  const int64_t chunk = (numel + kChunks - 1) / kChunks;
  std::vector<int64_t> local_counts(kChunks * K, 0), local_min(kChunks, 0), local_max(kChunks, 0);
  AT_DISPATCH_INTEGRAL_TYPES(labels.scalar_type(), "hierparse_label_counts", [&] {
    const scalar_t* src = labels.data_ptr<scalar_t>();
    at::parallel_for(0, kChunks, 1, [&](int64_t cb, int64_t ce) {
      for (int64_t ci = cb; ci < ce; ++ci) {
        const int64_t begin = ci * chunk, end = std::min(numel, begin + chunk);
        int64_t lo = 0, hi = 0;
        int64_t* hist = local_counts.data() + ci * K;
        for (int64_t i = begin; i < end; ++i) {
          const int64_t id = static_cast<int64_t>(src[i]);
          lo = std::min(lo, id);
          hi = std::max(hi, id);
          if (id >= 0 && id < K) ++hist[id];
        }
        local_min[ci] = lo;
        local_max[ci] = hi;
      }
    });
  });
  check_label_range(*std::min_element(local_min.begin(), local_min.end()),
                    *std::max_element(local_max.begin(), local_max.end()), K);
  at::Tensor counts = at::zeros({K}, at::kLong);
  int64_t* total = counts.data_ptr<int64_t>();
  for (int64_t ci = 0; ci < kChunks; ++ci)
    for (int64_t k = 0; k < K; ++k) total[k] += local_counts[ci * K + k];
  return counts;
}

std::tuple<at::Tensor, std::vector<at::Tensor>> multilevel_cross_entropy_cpu(
    at::TensorList logits, const at::Tensor& labels, const at::Tensor& table,
    const c10::optional<at::Tensor>& class_weights, at::ArrayRef<double> level_weights,
    double label_smoothing, int64_t ignore_index, int64_t reduction, bool compute_grad) {
  Plan plan = plan_multilevel_ce(logits, labels, table, class_weights, level_weights, label_smoothing,
                                 ignore_index, reduction);
  const at::Tensor contiguous_labels = labels.contiguous();
  set_level_scales(plan, label_counts(contiguous_labels, plan.K));

  at::Tensor losses = allocate_losses(plan, logits[0]);
  std::vector<at::Tensor> grads;
  if (compute_grad) {
    for (const at::Tensor& x : logits) grads.push_back(pooled_empty_like(x));
  }
  const int64_t L = static_cast<int64_t>(logits.size());
  const float* weights = plan.class_weights.defined() ? plan.class_weights.data_ptr<float>() : nullptr;
  std::vector<cpu::LevelArgs> levels;
  int64_t max_classes = 0, grad_bytes = 0;
  for (int64_t l = 0; l < L; ++l) {
    const LevelPlan& lp = plan.levels[l];
    cpu::LevelArgs a{};
    a.logits = logits[l].data_ptr();
    a.grad = compute_grad ? grads[l].data_ptr() : nullptr;
    a.C = lp.num_classes;
    for (int d = 0; d < 4; ++d) {
      a.xs[d] = logits[l].stride(d);
      a.gs[d] = compute_grad ? grads[l].stride(d) : 0;
    }
    a.table = plan.table.data_ptr<int32_t>() + l * plan.K;
    a.class_w = weights ? weights + lp.weight_offset : nullptr;
    a.grad_scale = lp.grad_scale;
    a.weight_sum = lp.weight_sum;
    levels.push_back(a);
    max_classes = std::max(max_classes, a.C);
    if (compute_grad) grad_bytes += grads[l].nbytes();
  }
  cpu::KernelArgs args{};
  args.levels = levels.data();
  args.num_levels = L;
  args.dtype = logit_type(logits[0].scalar_type());
  args.N = plan.N;
  args.H = plan.H;
  args.W = plan.W;
  args.tiles_per_row = (plan.W + kTile - 1) / kTile;
  args.num_tiles = plan.N * plan.H * args.tiles_per_row;
  args.label_smoothing = label_smoothing;
  const bool per_pixel = plan.reduction == Reduction::None;
  args.loss_map = per_pixel ? losses.data_ptr() : nullptr;
  std::vector<double> tile_sums(L * args.num_tiles, 0.0);
  args.tile_sums = tile_sums.data();
  args.streaming_stores = grad_bytes >= kStreamingBytes;

  if (args.num_tiles > 0) {
    AT_DISPATCH_INTEGRAL_TYPES(contiguous_labels.scalar_type(), "hierparse_multilevel_ce_cpu", [&] {
      const scalar_t* label_ptr = contiguous_labels.data_ptr<scalar_t>();
      std::atomic<int64_t> next_tile{0};
      const int64_t threads = std::min<int64_t>(at::get_num_threads(), (args.num_tiles + kTilesPerClaim - 1) / kTilesPerClaim);
      at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
        run_tiles<scalar_t>(args, label_ptr, max_classes, next_tile);
      });
    });
  }

  if (!per_pixel) {
    std::vector<double> scales;
    for (const auto& level : plan.levels) scales.push_back(level.loss_scale);
    write_level_totals(losses, tile_sums.data(), args.num_tiles, scales);
  }
  return {losses, grads};
}

}  // namespace

TORCH_LIBRARY_IMPL(hierparse, CPU, m) {
  m.impl("multilevel_cross_entropy", &multilevel_cross_entropy_cpu);
}

TORCH_LIBRARY_FRAGMENT(hierparse, m) {
  // The instruction set of the CPU tile kernel in use: default, avx2 or avx512.
  m.def("cpu_capability() -> str", &cpu_capability);
}

}  // namespace hierparse
