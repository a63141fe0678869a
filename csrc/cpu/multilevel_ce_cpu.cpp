// CPU kernel of hierparse::multilevel_cross_entropy.
//
// The image is cut into tiles of up to kTile pixels of one row. For each tile the raw labels are
// read once and looked up for every level; each level's logits tile (C x kTile) is copied into a
// float buffer that stays in L1, where max, exp-sum, loss and gradient run as plain loops over
// pixels that the compiler vectorises (the hot function is cloned for AVX-512, AVX2 and baseline
// x86-64 and picked at load time). Logits are read from memory once and gradients written once.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "cpu/gradient_pool.h"
#include "multilevel_ce.h"
#include "multilevel_ce_host.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define HP_CPU_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define HP_CPU_CLONES
#endif

namespace hierparse {
namespace {

constexpr int64_t kTile = 256;
constexpr int64_t kTilesPerTask = 16;  // scheduling grain of at::parallel_for

struct LevelArgs {
  const void* logits;
  void* grad;          // nullptr without gradients
  int64_t C;
  int64_t xs[4];       // logits strides (N, C, H, W)
  int64_t gs[4];       // gradient strides
  const int32_t* table;    // row of K entries, -1 = ignored
  const float* class_w;    // C weights or nullptr (all 1)
  double grad_scale;
  double weight_sum;
};

struct KernelArgs {
  std::vector<LevelArgs> levels;
  int64_t N, H, W, tiles_per_row;
  double label_smoothing;
  void* loss_map;       // [L, N, H, W] in the compute type for reduction "none", else nullptr
  double* tile_sums;    // [L, num_tiles] per-tile loss sums (deterministic final order)
  int64_t num_tiles;
};

// Scratch space of one task, in the compute type.
template <typename acc_t>
struct Scratch {
  explicit Scratch(int64_t max_classes)
      : values(max_classes * kTile), row_max(kTile), row_sum(kTile), d_target(kTile),
        weighted_d(kTile), w_target(kTile), loss(kTile), target(kTile) {}
  std::vector<acc_t> values, row_max, row_sum, d_target, weighted_d, w_target, loss;
  std::vector<int32_t> target;
};

// One level of one tile: returns the sum of its pixel losses; writes gradients when asked.
template <typename scalar_t, typename acc_t>
inline __attribute__((always_inline)) double level_tile(
    const LevelArgs& a, const LevelCoefficients<acc_t>& k, bool smoothing, int64_t n, int64_t h,
    int64_t w0, int64_t P, const int32_t* raw, Scratch<acc_t>& s, acc_t* loss_out) {
  const int64_t C = a.C;
  acc_t* __restrict v = s.values.data();
  acc_t* __restrict m = s.row_max.data();
  acc_t* __restrict sum = s.row_sum.data();
  acc_t* __restrict dt = s.d_target.data();
  acc_t* __restrict wd = s.weighted_d.data();
  acc_t* __restrict wt = s.w_target.data();
  acc_t* __restrict loss = s.loss.data();
  int32_t* __restrict tgt = s.target.data();

  const scalar_t* x = static_cast<const scalar_t*>(a.logits) + n * a.xs[0] + h * a.xs[2] + w0 * a.xs[3];
  for (int64_t p = 0; p < P; ++p) tgt[p] = lookup_target(raw[p], a.table);
  // Load (converting to the compute type) and take the running max in the same pass.
  for (int64_t c = 0; c < C; ++c) {
    const scalar_t* xc = x + c * a.xs[1];
    acc_t* vc = v + c * P;
    if (a.xs[3] == 1) {
      for (int64_t p = 0; p < P; ++p) vc[p] = static_cast<acc_t>(xc[p]);
    } else {
      for (int64_t p = 0; p < P; ++p) vc[p] = static_cast<acc_t>(xc[p * a.xs[3]]);
    }
    if (c == 0) {
      for (int64_t p = 0; p < P; ++p) m[p] = vc[p];
    } else {
      for (int64_t p = 0; p < P; ++p) m[p] = max_value(m[p], vc[p]);
    }
  }
  for (int64_t p = 0; p < P; ++p) {
    const bool valid = tgt[p] >= 0;
    dt[p] = valid ? v[tgt[p] * P + p] - m[p] : acc_t(0);
    wt[p] = valid ? (a.class_w ? static_cast<acc_t>(a.class_w[tgt[p]]) : acc_t(1)) : acc_t(0);
    sum[p] = 0;
    wd[p] = 0;
  }
  for (int64_t c = 0; c < C; ++c) {
    acc_t* vc = v + c * P;
    if (smoothing) {
      const acc_t wc = a.class_w ? static_cast<acc_t>(a.class_w[c]) : acc_t(1);
      for (int64_t p = 0; p < P; ++p) wd[p] += wc * (vc[p] - m[p]);
    }
    for (int64_t p = 0; p < P; ++p) {
      const acc_t e = exp_nonpositive(vc[p] - m[p]);
      sum[p] += e;
      vc[p] = e;
    }
  }
  for (int64_t p = 0; p < P; ++p) {
    loss[p] = tgt[p] >= 0 ? pixel_loss(k, log_positive(sum[p]), dt[p], wt[p], wd[p]) : acc_t(0);
  }
  // Sixteen independent partial sums: a vectorisable reduction instead of one serial chain.
  constexpr int64_t kLanes = 16;
  acc_t lanes[kLanes] = {};
  int64_t p = 0;
  for (; p + kLanes <= P; p += kLanes)
    for (int64_t j = 0; j < kLanes; ++j) lanes[j] += loss[p + j];
  double loss_sum = 0;
  for (; p < P; ++p) loss_sum += static_cast<double>(loss[p]);
  for (int64_t j = 0; j < kLanes; ++j) loss_sum += static_cast<double>(lanes[j]);
  if (loss_out != nullptr) {  // reduction "none": the level-weighted loss of each pixel
    for (int64_t p = 0; p < P; ++p) loss_out[p] = loss[p] * k.scale;
  }
  if (a.grad == nullptr) return loss_sum;

  for (int64_t p = 0; p < P; ++p) sum[p] = softmax_coefficient(k, wt[p], acc_t(1) / sum[p], tgt[p] >= 0);
  scalar_t* g = static_cast<scalar_t*>(a.grad) + n * a.gs[0] + h * a.gs[2] + w0 * a.gs[3];
  for (int64_t c = 0; c < C; ++c) {
    acc_t* vc = v + c * P;
    const acc_t wc = a.class_w ? static_cast<acc_t>(a.class_w[c]) : acc_t(1);
    scalar_t* gc = g + c * a.gs[1];
    if (a.gs[3] == 1) {
      for (int64_t p = 0; p < P; ++p)
        gc[p] = static_cast<scalar_t>(logit_gradient(k, vc[p], sum[p], wc, tgt[p] >= 0, tgt[p] == c, wt[p]));
    } else {
      for (int64_t p = 0; p < P; ++p)
        gc[p * a.gs[3]] =
            static_cast<scalar_t>(logit_gradient(k, vc[p], sum[p], wc, tgt[p] >= 0, tgt[p] == c, wt[p]));
    }
  }
  return loss_sum;
}

// All levels of the tiles [begin, end): labels are read once per tile and looked up per level.
// Every level of one tile; `raw` holds the tile's label ids, read once for all levels.
template <typename scalar_t, typename acc_t>
inline __attribute__((always_inline)) void tile_all_levels(const KernelArgs& args, int64_t tile,
                                                           const int32_t* raw, Scratch<acc_t>& scratch) {
  const int64_t row = tile / args.tiles_per_row;  // n * H + h
  const int64_t w0 = (tile % args.tiles_per_row) * kTile;
  const int64_t P = std::min(kTile, args.W - w0);
  const int64_t n = row / args.H, h = row % args.H;
  const bool smoothing = args.label_smoothing != 0.0;
  for (size_t l = 0; l < args.levels.size(); ++l) {
    const LevelArgs& a = args.levels[l];
    const LevelCoefficients<acc_t> k{static_cast<acc_t>(1.0 - args.label_smoothing),
                                     static_cast<acc_t>(args.label_smoothing / static_cast<double>(a.C)),
                                     static_cast<acc_t>(a.weight_sum), static_cast<acc_t>(a.grad_scale)};
    acc_t* loss_out = args.loss_map
                          ? static_cast<acc_t*>(args.loss_map) + (l * args.N * args.H + row) * args.W + w0
                          : nullptr;
    args.tile_sums[l * args.num_tiles + tile] =
        level_tile<scalar_t, acc_t>(a, k, smoothing, n, h, w0, P, raw, scratch, loss_out);
  }
}

// The hot code, compiled once per instruction set (see HP_CPU_CLONES) for each logits dtype.
using TileFn = void (*)(const KernelArgs&, int64_t, const int32_t*, void*);
HP_CPU_CLONES void tile_float(const KernelArgs& a, int64_t t, const int32_t* r, void* s) {
  tile_all_levels<float, float>(a, t, r, *static_cast<Scratch<float>*>(s));
}
HP_CPU_CLONES void tile_half(const KernelArgs& a, int64_t t, const int32_t* r, void* s) {
  tile_all_levels<at::Half, float>(a, t, r, *static_cast<Scratch<float>*>(s));
}
HP_CPU_CLONES void tile_bfloat16(const KernelArgs& a, int64_t t, const int32_t* r, void* s) {
  tile_all_levels<at::BFloat16, float>(a, t, r, *static_cast<Scratch<float>*>(s));
}
void tile_double(const KernelArgs& a, int64_t t, const int32_t* r, void* s) {
  tile_all_levels<double, double>(a, t, r, *static_cast<Scratch<double>*>(s));
}

// Tiles [begin, end): copies each tile's labels (any integer type) to int32, then runs `fn`.
template <typename label_t, typename acc_t>
void run_tiles(const KernelArgs& args, const label_t* labels, TileFn fn, int64_t begin, int64_t end) {
  int64_t max_classes = 0;
  for (const LevelArgs& a : args.levels) max_classes = std::max(max_classes, a.C);
  Scratch<acc_t> scratch(max_classes);
  int32_t raw[kTile];
  for (int64_t tile = begin; tile < end; ++tile) {
    const int64_t row = tile / args.tiles_per_row;
    const int64_t w0 = (tile % args.tiles_per_row) * kTile;
    const int64_t P = std::min(kTile, args.W - w0);
    const label_t* src = labels + row * args.W + w0;
    for (int64_t p = 0; p < P; ++p) raw[p] = static_cast<int32_t>(src[p]);
    fn(args, tile, raw, &scratch);
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
  KernelArgs args;
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
  const float* weights = plan.class_weights.defined() ? plan.class_weights.data_ptr<float>() : nullptr;
  for (int64_t l = 0; l < L; ++l) {
    const LevelPlan& lp = plan.levels[l];
    LevelArgs a{};
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
    args.levels.push_back(a);
  }

  if (plan.N * plan.H * plan.W > 0) {
    const at::ScalarType dtype = logits[0].scalar_type();
    const TileFn fn = dtype == at::kFloat      ? tile_float
                      : dtype == at::kHalf     ? tile_half
                      : dtype == at::kBFloat16 ? tile_bfloat16
                                               : tile_double;
    AT_DISPATCH_INTEGRAL_TYPES(contiguous_labels.scalar_type(), "hierparse_multilevel_ce_cpu", [&] {
      const scalar_t* label_ptr = contiguous_labels.data_ptr<scalar_t>();
      at::parallel_for(0, args.num_tiles, kTilesPerTask, [&](int64_t begin, int64_t end) {
        if (dtype == at::kDouble) {
          run_tiles<scalar_t, double>(args, label_ptr, fn, begin, end);
        } else {
          run_tiles<scalar_t, float>(args, label_ptr, fn, begin, end);
        }
      });
    });
  }

  if (!per_pixel) {
    std::vector<double> totals(L, 0.0);
    for (int64_t l = 0; l < L; ++l) {
      // Summed in tile order: the same result for any number of threads.
      for (int64_t t = 0; t < args.num_tiles; ++t) totals[l] += tile_sums[l * args.num_tiles + t];
      totals[l] *= plan.levels[l].loss_scale;
    }
    losses.copy_(at::tensor(totals, at::kDouble));
  }
  return {losses, grads};
}

}  // namespace

TORCH_LIBRARY_IMPL(hierparse, CPU, m) {
  m.impl("multilevel_cross_entropy", &multilevel_cross_entropy_cpu);
}

}  // namespace hierparse
