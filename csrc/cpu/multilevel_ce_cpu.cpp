// CPU implementation of hierparse::multilevel_cross_entropy: argument checks and planning (shared
// with CUDA), the label histogram for the "mean" divisors, threads over tiles of pixels (levels at
// the labels' size) and over units of low-resolution rows (levels upsampled in the op), and the
// choice of kernels for this CPU (tile_kernel_impl.h and upsample_kernel_impl.h, compiled per
// instruction set).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "cpu/gradient_pool.h"
#include "cpu/tile_kernel.h"
#include "cpu/upsampled_ce_gather_cpu.h"
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

const CpuCapability& capability() { return cpu::selected_capability(); }

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

// Bilinear source indices and weights along one axis of `out` outputs from `in` inputs, computed as
// ATen's upsample_bilinear2d does (area_pixel_compute_scale, area_pixel_compute_source_index and
// compute_source_index_and_lambda in ATen/native/UpSample.h, floorf included) in its opmath type:
// float for float, half and bfloat16 logits, double for double. Its forward pass stores the weights
// in the logits' type (rounding them for half and bfloat16), its backward pass keeps them in opmath.
struct AxisTable {
  std::vector<int64_t> i0, i1, begin0;
  at::Tensor weights;  // [4, out] in the compute type: w0, w1, grad_w0, grad_w1

  cpu::UpsampleAxis view() const {
    const int64_t stride = weights.stride(0) * weights.element_size();
    const char* w = static_cast<const char*>(weights.data_ptr());
    return {i0.data(), i1.data(), begin0.data(), w, w + stride, w + 2 * stride, w + 3 * stride};
  }
};

template <typename scalar_t>
void fill_axis(int64_t in, int64_t out, bool align_corners, AxisTable& t) {
  using opmath_t = at::opmath_type<scalar_t>;
  opmath_t* w = t.weights.data_ptr<opmath_t>();
  const opmath_t scale = align_corners ? (out > 1 ? static_cast<opmath_t>(in - 1) / (out - 1) : opmath_t(0))
                                       : static_cast<opmath_t>(in) / out;
  for (int64_t i = 0; i < out; ++i) {
    opmath_t lambda = 0;
    if (in == out) {
      t.i0[i] = t.i1[i] = i;
    } else {
      opmath_t src = align_corners ? scale * i : scale * (i + static_cast<opmath_t>(0.5)) - static_cast<opmath_t>(0.5);
      if (!align_corners && src < static_cast<opmath_t>(0)) src = 0;
      t.i0[i] = std::min(static_cast<int64_t>(floorf(src)), in - 1);
      lambda = std::min(std::max(src - t.i0[i], static_cast<opmath_t>(0)), static_cast<opmath_t>(1));
      t.i1[i] = t.i0[i] + (t.i0[i] < in - 1 ? 1 : 0);
    }
    const scalar_t stored = static_cast<scalar_t>(lambda);
    w[i] = static_cast<opmath_t>(static_cast<scalar_t>(static_cast<scalar_t>(1.) - stored));
    w[out + i] = static_cast<opmath_t>(stored);
    w[2 * out + i] = static_cast<opmath_t>(1) - lambda;
    w[3 * out + i] = lambda;
  }
}

AxisTable bilinear_axis(int64_t in, int64_t out, bool align_corners, at::ScalarType dtype) {
  AxisTable t{std::vector<int64_t>(out), std::vector<int64_t>(out), {},
              at::empty({4, out}, dtype == at::kDouble ? at::kDouble : at::kFloat)};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "hierparse_bilinear_axis", [&] {
    fill_axis<scalar_t>(in, out, align_corners, t);
  });
  // begin0[j]: the first output whose (non-decreasing) i0 is at least j
  t.begin0.assign(in + 1, out);
  for (int64_t i = out - 1; i >= 0; --i) t.begin0[t.i0[i]] = i;
  for (int64_t j = in - 1; j >= 0; --j) t.begin0[j] = std::min(t.begin0[j], t.begin0[j + 1]);
  return t;
}

// The gradient weights of an axis (in inputs) as cpu::GradientBand.
struct BandTable {
  std::vector<int64_t> first, offset;
  at::Tensor weights;  // [offset.back(), kBandInputs] in the compute type

  cpu::GradientBand view() const { return {first.data(), offset.data(), weights.data_ptr()}; }
};

BandTable gradient_band(const AxisTable& axis, int64_t in) {
  constexpr int64_t kBand = cpu::kBandInputs;
  const int64_t blocks = (in + kBand - 1) / kBand;
  BandTable band;
  band.offset.push_back(0);
  for (int64_t b = 0; b < blocks; ++b) {  // the outputs with i0 or i1 in the block (i1 >= i0 >= i1 - 1)
    int64_t first = axis.begin0[b * kBand], end = axis.begin0[std::min((b + 1) * kBand, in)];
    while (first > 0 && axis.i1[first - 1] >= b * kBand) --first;
    band.first.push_back(first);
    band.offset.push_back(band.offset.back() + end - first);
  }
  const at::Tensor grad_w0 = axis.weights[2].to(at::kDouble), grad_w1 = axis.weights[3].to(at::kDouble);
  at::Tensor weights = at::zeros({band.offset.back(), kBand}, at::kDouble);
  double* m = weights.data_ptr<double>();
  for (int64_t b = 0; b < blocks; ++b) {
    for (int64_t row = band.offset[b]; row < band.offset[b + 1]; ++row) {
      const int64_t x = band.first[b] + row - band.offset[b];
      auto add = [&](int64_t source, double weight) {
        if (source >= b * kBand && source < (b + 1) * kBand) m[row * kBand + source - b * kBand] += weight;
      };
      add(axis.i0[x], grad_w0.data_ptr<double>()[x]);
      add(axis.i1[x], grad_w1.data_ptr<double>()[x]);
    }
  }
  band.weights = weights.to(axis.weights.scalar_type());
  return band;
}

// The levels of one size smaller than the labels, with everything their units need.
struct Group {
  int64_t h = 0, w = 0;
  std::vector<int64_t> level_index;  // into the op's levels
  std::vector<cpu::LevelArgs> levels;
  AxisTable rows, cols;
  BandTable col_band;
  std::vector<double> unit_sums;
  at::Tensor halos, first_rows;
  cpu::UpsampleGroup args{};
};

template <typename label_t>
void load_label_row(const void* labels, int64_t begin, int64_t count, int32_t* raw) {
  const label_t* src = static_cast<const label_t*>(labels) + begin;
  for (int64_t i = 0; i < count; ++i) raw[i] = static_cast<int32_t>(src[i]);
}

// One thread's share of the units of all groups (numbered group after group), claimed one at a time.
void run_units(const cpu::KernelArgs& args, const std::vector<Group>& groups, const void* labels,
               cpu::LabelLoader load_labels, int64_t scratch_bytes, std::atomic<int64_t>& next_unit,
               int64_t num_units) {
  const CpuCapability& cap = capability();
  const std::unique_ptr<char[]> scratch_memory(new char[scratch_bytes + 64]);
  char* scratch = scratch_memory.get() + (64 - reinterpret_cast<uintptr_t>(scratch_memory.get()) % 64) % 64;
  for (int64_t unit; (unit = next_unit.fetch_add(1)) < num_units;) {
    size_t g = 0;
    while (unit >= groups[g].args.num_units) unit -= groups[g++].args.num_units;
    cap.run_unit(args, groups[g].args, unit, labels, load_labels, scratch);
  }
}

std::tuple<at::Tensor, std::vector<at::Tensor>> multilevel_cross_entropy_cpu(
    at::TensorList logits, const at::Tensor& labels, const at::Tensor& table,
    const c10::optional<at::Tensor>& class_weights, at::ArrayRef<double> level_weights,
    double label_smoothing, int64_t ignore_index, int64_t reduction, bool compute_grad, bool align_corners,
    const c10::optional<at::Tensor>& set_members, const c10::optional<at::Tensor>& grad_weights) {
  Plan plan = plan_multilevel_ce(logits, labels, table, class_weights, level_weights, label_smoothing,
                                 ignore_index, reduction, align_corners, set_members);
  const at::Tensor pixel_grad_weights = checked_pixel_grad_weights(plan, grad_weights, logits[0].device());
  const at::Tensor contiguous_labels = labels.contiguous();
  const at::Tensor counts = label_counts(contiguous_labels, plan.K);
  check_scorable("multilevel_cross_entropy", plan, counts.data_ptr<int64_t>());
  set_level_scales(plan, counts);

  at::Tensor losses = allocate_losses(plan, logits[0]);
  std::vector<at::Tensor> grads;
  if (compute_grad) {
    for (const at::Tensor& x : logits) grads.push_back(pooled_empty_like(x));
  }
  const int64_t L = static_cast<int64_t>(logits.size());
  const bool per_pixel = plan.reduction == Reduction::None;
  const float* weights = plan.class_weights.defined() ? plan.class_weights.data_ptr<float>() : nullptr;
  // Levels at the labels' size go through the tile kernel, the others through units of their size group.
  std::vector<cpu::LevelArgs> full_levels;
  std::vector<int64_t> full_index;
  std::vector<Group> groups;
  std::vector<int64_t> gathered;  // smaller levels run by the CUDA kernel's algorithm (cpu_upsampling_is_gather)
  const bool gather = cpu_upsampling_is_gather();
  int64_t max_classes = 0, grad_bytes = 0;
  for (int64_t l = 0; l < L; ++l) {
    const LevelPlan& lp = plan.levels[l];
    cpu::LevelArgs a{};
    a.logits = logits[l].data_ptr();
    a.grad = compute_grad ? grads[l].data_ptr() : nullptr;
    a.loss_map = per_pixel ? losses[l].data_ptr() : nullptr;
    a.C = lp.num_classes;
    for (int d = 0; d < 4; ++d) {
      a.xs[d] = logits[l].stride(d);
      a.gs[d] = compute_grad ? grads[l].stride(d) : 0;
    }
    a.table = plan.table.data_ptr<int32_t>() + l * plan.K;
    a.class_w = weights ? weights + lp.weight_offset : nullptr;
    a.sets = level_sets(plan, l);
    a.grad_scale = lp.grad_scale;
    a.weight_sum = lp.weight_sum;
    a.grad_weights = pixel_grad_weights.defined() ? pixel_grad_weights[l].data_ptr() : nullptr;
    if (lp.h == plan.H && lp.w == plan.W) {
      full_levels.push_back(a);
      full_index.push_back(l);
      max_classes = std::max(max_classes, a.C);
      if (compute_grad) grad_bytes += grads[l].nbytes();
      continue;
    }
    if (gather) {
      gathered.push_back(l);
      continue;
    }
    auto same_size = [&](const Group& g) { return g.h == lp.h && g.w == lp.w; };
    auto group = std::find_if(groups.begin(), groups.end(), same_size);
    if (group == groups.end()) {
      groups.emplace_back();
      group = groups.end() - 1;
      group->h = lp.h;
      group->w = lp.w;
    }
    group->level_index.push_back(l);
    group->levels.push_back(a);
  }

  cpu::KernelArgs args{};
  args.levels = full_levels.data();
  args.num_levels = static_cast<int64_t>(full_levels.size());
  args.dtype = logit_type(logits[0].scalar_type());
  args.N = plan.N;
  args.H = plan.H;
  args.W = plan.W;
  args.tiles_per_row = (plan.W + kTile - 1) / kTile;
  args.num_tiles = full_levels.empty() ? 0 : plan.N * plan.H * args.tiles_per_row;
  args.label_smoothing = label_smoothing;
  std::vector<double> tile_sums(args.num_levels * args.num_tiles, 0.0);
  args.tile_sums = tile_sums.data();
  args.streaming_stores = grad_bytes >= kStreamingBytes;
  args.prefetch_logits = true;

  // Units of low-resolution rows for the smaller levels (see cpu::kUnitRows).
  const at::ScalarType compute_type = plan.loss_dtype;
  const int64_t compute_bytes = c10::elementSize(compute_type), storage_bytes = logits[0].element_size();
  const bool rounds_once = compute_bytes != storage_bytes;  // half/bfloat16
  int64_t num_units = 0, scratch_bytes = 0;
  for (Group& g : groups) {
    g.rows = bilinear_axis(g.h, plan.H, align_corners, logits[0].scalar_type());
    g.cols = bilinear_axis(g.w, plan.W, align_corners, logits[0].scalar_type());
    if (compute_grad) g.col_band = gradient_band(g.cols, g.w);
    const int64_t units_per_image = (g.h + cpu::kUnitRows - 1) / cpu::kUnitRows;
    cpu::UpsampleGroup& u = g.args;
    u.levels = g.levels.data();
    u.num_levels = static_cast<int64_t>(g.levels.size());
    for (const cpu::LevelArgs& a : g.levels) u.total_classes += a.C;
    u.h = g.h;
    u.w = g.w;
    u.rows = g.rows.view();
    u.cols = g.cols.view();
    if (compute_grad) u.col_band = g.col_band.view();
    u.units_per_image = units_per_image;
    u.num_units = plan.N * units_per_image;
    g.unit_sums.assign(u.num_levels * u.num_units, 0.0);
    u.unit_sums = g.unit_sums.data();
    if (compute_grad) {
      g.halos = at::empty({u.num_units, u.total_classes, g.w}, compute_type);
      u.halos = g.halos.data_ptr();
      if (rounds_once) {
        g.first_rows = at::empty({u.num_units, u.total_classes, g.w}, compute_type);
        u.first_rows = g.first_rows.data_ptr();
      }
    }
    num_units += u.num_units;
    scratch_bytes = std::max(scratch_bytes, cpu::carve_unit_scratch(nullptr, u, plan.W, compute_bytes, compute_grad,
                                                                    nullptr));
  }

  AT_DISPATCH_INTEGRAL_TYPES(contiguous_labels.scalar_type(), "hierparse_multilevel_ce_cpu", [&] {
    const scalar_t* label_ptr = contiguous_labels.data_ptr<scalar_t>();
    if (args.num_tiles > 0) {
      std::atomic<int64_t> next_tile{0};
      const int64_t threads =
          std::min<int64_t>(at::get_num_threads(), (args.num_tiles + kTilesPerClaim - 1) / kTilesPerClaim);
      at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
        run_tiles<scalar_t>(args, label_ptr, max_classes, next_tile);
      });
    }
    if (num_units > 0) {
      std::atomic<int64_t> next_unit{0};
      const int64_t threads = std::min<int64_t>(at::get_num_threads(), num_units);
      at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
        run_units(args, groups, label_ptr, &load_label_row<scalar_t>, scratch_bytes, next_unit, num_units);
      });
    }
  });
  const std::vector<double> gathered_sums =
      gather_upsampled_levels(plan, logits, contiguous_labels, losses, grads, pixel_grad_weights, gathered);
  if (compute_grad) {
    // Each unit's first gradient row gets the halo of the unit above: a few rows, not worth threads.
    for (const Group& g : groups)
      for (int64_t unit = 0; unit < g.args.num_units; ++unit) capability().join_unit(args, g.args, unit);
    weigh_full_size_grads(plan, grads, pixel_grad_weights);
  }

  if (!per_pixel) {
    // Per level, its tiles' or units' loss sums (zeros past a level's last chunk add nothing).
    int64_t chunks = std::max<int64_t>(args.num_tiles, 1);
    for (const Group& g : groups) chunks = std::max(chunks, g.args.num_units);
    std::vector<double> partials(L * chunks, 0.0);
    for (size_t i = 0; i < full_index.size(); ++i)
      std::copy_n(tile_sums.begin() + i * args.num_tiles, args.num_tiles, partials.begin() + full_index[i] * chunks);
    for (const Group& g : groups)
      for (size_t k = 0; k < g.level_index.size(); ++k)
        std::copy_n(g.unit_sums.begin() + k * g.args.num_units, g.args.num_units,
                    partials.begin() + g.level_index[k] * chunks);
    for (size_t k = 0; k < gathered.size(); ++k) partials[gathered[k] * chunks] = gathered_sums[k];
    std::vector<double> scales;
    for (const auto& level : plan.levels) scales.push_back(level.loss_scale);
    write_level_totals(losses, partials.data(), chunks, scales);
  }
  return {losses, grads};
}

}  // namespace

const cpu::CpuCapability& cpu::selected_capability() {
  static const CpuCapability selected = select_capability();
  return selected;
}

TORCH_LIBRARY_IMPL(hierparse, CPU, m) {
  m.impl("multilevel_cross_entropy", &multilevel_cross_entropy_cpu);
}

TORCH_LIBRARY_FRAGMENT(hierparse, m) {
  // The instruction set of the CPU tile kernel in use: default, avx2 or avx512.
  m.def("cpu_capability() -> str", &cpu_capability);
}

}  // namespace hierparse
