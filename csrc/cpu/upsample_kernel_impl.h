// The cross-entropy of logits smaller than the labels, upsampled on the fly exactly as ATen's
// upsample_bilinear2d would (units of low-resolution rows: kUnitRows in tile_kernel.h). Included
// once per instruction set after tile_kernel_impl.h, whose level_tile scores the interpolated logits.
//
// A unit walks its full-resolution rows y in order; row y reads low-resolution rows i0 <= i1.
//   forward:  a low-resolution row is interpolated horizontally once (two rows are cached), then
//             level_tile scores row y, reading its logits through BlendedRows: top * w0 + bottom * w1
//             (ATen's order), rounded to the logits' type, a block at a time in registers;
//   backward: level_tile hands row y's gradients to BlendedRows too, which adds them vertically into
//             two full-width rows (one per source row); such a row is complete once y has moved past
//             its source row and is then scattered horizontally into the unit's low-resolution
//             gradient rows.
// No full-resolution tensor exists: the scratch holds a few full-width rows per level.
#ifndef HP_ISA
#error "include tile_kernel_impl.h (with HP_ISA defined) before upsample_kernel_impl.h"
#endif

namespace hierparse {
namespace cpu {
namespace HP_ISA {

// Row r of image n of a level's logits (w columns) interpolated horizontally to the W columns:
// out [C, W]. The outputs go a vector at a time: their sources lie in a window of two vectors of the
// source row, from which a shuffle picks each output's left and right value (no gathers). `rows`
// is scratch for the source rows in the compute type, [C, w + kSourcePadding].
template <typename scalar_t, typename V>
void interpolate_columns(const LevelArgs& a, const UpsampleAxis& cols, int64_t n, int64_t r, int64_t w, int64_t W,
                         typename VecTraits<V>::scalar* rows, typename VecTraits<V>::scalar* out) {
  using S = typename VecTraits<V>::scalar;
  using M = typename VecTraits<V>::mask;
  constexpr int kLanes = VecTraits<V>::lanes;
  static_assert(2 * kLanes <= kSourcePadding, "a window must fit in the padding");
  const int64_t stride = w + kSourcePadding;
  for (int64_t c = 0; c < a.C; ++c) {
    const scalar_t* src = static_cast<const scalar_t*>(a.logits) + n * a.xs[0] + c * a.xs[1] + r * a.xs[2];
    S* row = rows + c * stride;
    for (int64_t j = 0; j < w; ++j) row[j] = to_compute(src[j * a.xs[3]]);
    for (int64_t j = w; j < stride; ++j) row[j] = S(0);
  }
  for (int64_t x0 = 0; x0 < W; x0 += kLanes) {
    const int count = static_cast<int>(W - x0 < kLanes ? W - x0 : kLanes);
    // Upsampling: consecutive outputs step by at most one source column, so the window of an output
    // vector spans at most kLanes + 1 columns from its first output's left source.
    const int64_t base = cols.i0[x0];
    M left, right;
    for (int j = 0; j < kLanes; ++j) {
      const int64_t x = x0 + (j < count ? j : count - 1);
      left[j] = cols.i0[x] - base;
      right[j] = cols.i1[x] - base;
    }
    const V w0 = load<V>(static_cast<const S*>(cols.w0) + x0, 1, count);
    const V w1 = load<V>(static_cast<const S*>(cols.w1) + x0, 1, count);
    for (int64_t c = 0; c < a.C; ++c) {
      const S* window = rows + c * stride + base;
      const V low = load<V>(window, 1, kLanes), high = load<V>(window + kLanes, 1, kLanes);
      const V o = __builtin_shuffle(low, high, left) * w0 + __builtin_shuffle(low, high, right) * w1;
      store<1>(out + c * W + x0, 1, count, &o, false);
    }
  }
}

// Adds full-width gradient rows grad [C, W] horizontally into low-resolution rows out [C, w]: per
// block of kBandInputs columns of out, a sum of weight rows of the band times gradient values.
template <typename S>
void scatter_columns(const S* grad, const GradientBand& band, int64_t C, int64_t W, int64_t w, S* out) {
  typedef S Lanes __attribute__((vector_size(kBandInputs * sizeof(S))));  // one or more registers
  const auto weight_row = [&](int64_t row) {
    Lanes m;
    std::memcpy(&m, static_cast<const S*>(band.weights) + row * kBandInputs, sizeof(m));
    return m;
  };
  for (int64_t c = 0; c < C; ++c) {
    const S* g = grad + c * W;
    for (int64_t b = 0, j0 = 0; j0 < w; ++b, j0 += kBandInputs) {
      const int64_t row = band.offset[b], rows = band.offset[b + 1] - row, x = band.first[b];
      Lanes sums[4] = {};  // four chains of additions (columns x + i with i % 4 = 0, 1, 2, 3): no waiting
      int64_t i = 0;
      for (; i + 3 < rows; i += 4)
        for (int k = 0; k < 4; ++k) sums[k] += g[x + i + k] * weight_row(row + i + k);
      for (; i < rows; ++i) sums[i % 4] += g[x + i] * weight_row(row + i);
      const Lanes sum = (sums[0] + sums[1]) + (sums[2] + sums[3]);
      S* o = out + c * w + j0;
      for (int64_t k = 0; k < kBandInputs && j0 + k < w; ++k) o[k] += sum[k];
    }
  }
}

// level_tile's access to full-resolution row y of an upsampled level (see the top of this file).
template <typename scalar_t, typename V>
struct BlendedRows {
  using S = typename VecTraits<V>::scalar;
  const S* top;             // the two cached rows interpolated horizontally, [C, W]
  const S* bottom;
  int64_t W;
  S top_weight, bottom_weight;
  S* grad_top;              // the two full-width gradient rows, [C, W] (the same row at the bottom edge)
  S* grad_bottom;
  S top_grad_weight, bottom_grad_weight;
  const S* pixel_weights;   // row y's incoming gradient weights, or nullptr

  // F.interpolate's output, and the cross-entropy's gradient, are stored in the logits' type.
  HP_INLINE static V rounded(V v) {
    if constexpr (sizeof(scalar_t) != sizeof(S)) {
      for (int j = 0; j < VecTraits<V>::lanes; ++j) v[j] = to_compute(store_value<scalar_t>(v[j]));
    }
    return v;
  }

  HP_INLINE V logits(int64_t c, int64_t p, int lanes) const {
    const V t = load<V>(top + c * W + p, 1, lanes), b = load<V>(bottom + c * W + p, 1, lanes);
    return rounded(t * top_weight + b * bottom_weight);
  }

  template <int B>
  HP_INLINE void gradients(int64_t c, int64_t p0, int count, const V* grad) const {
    constexpr int kLanes = VecTraits<V>::lanes;
    for (int b = 0; b < B && b * kLanes < count; ++b) {
      const int64_t p = p0 + b * kLanes;
      const int lanes = count - b * kLanes < kLanes ? count - b * kLanes : kLanes;
      V g = rounded(grad[b]);
      if (pixel_weights) g *= load<V>(pixel_weights + p, 1, lanes);
      S* gt = grad_top + c * W + p;
      const V t = load<V>(gt, 1, lanes) + top_grad_weight * g;
      store<1>(gt, 1, lanes, &t, false);
      S* gb = grad_bottom + c * W + p;  // loaded after the store above: it may be the same row
      const V u = load<V>(gb, 1, lanes) + bottom_grad_weight * g;
      store<1>(gb, 1, lanes, &u, false);
    }
  }
};

// The one of two cached rows (each `size` values at `rows`, tagged by row_of) that holds
// low-resolution row r. When neither does, the slot of the lower row (or an empty one) is handed
// to `release` (rows only move down, so that row is done), then tagged r and filled by `fill`.
template <typename S, typename Release, typename Fill>
HP_INLINE S* cached_row(S* rows, int64_t* row_of, int64_t size, int64_t r, const Release& release, const Fill& fill) {
  for (int i = 0; i < 2; ++i)
    if (row_of[i] == r) return rows + i * size;
  const int i = row_of[0] <= row_of[1] ? 0 : 1;
  S* slot = rows + i * size;
  if (row_of[i] >= 0) release(slot, row_of[i]);
  row_of[i] = r;
  fill(slot);
  return slot;
}

template <typename scalar_t, typename V, bool kWithGrad>
void run_unit_typed(const KernelArgs& args, const UpsampleGroup& g, int64_t unit, const void* labels,
                    LabelLoader load_labels, void* scratch) {
  using S = typename VecTraits<V>::scalar;
  constexpr bool kRoundsOnce = sizeof(scalar_t) != sizeof(S);  // half/bfloat16: the join rounds row r0
  const int64_t H = args.H, W = args.W, w = g.w;
  const int64_t n = unit / g.units_per_image, tile = unit % g.units_per_image;
  const int64_t r0 = tile * kUnitRows, r1 = r0 + kUnitRows < g.h ? r0 + kUnitRows : g.h;
  UnitScratch s;
  carve_unit_scratch(static_cast<char*>(scratch), g, W, sizeof(S), kWithGrad, &s);
  S* source_rows = static_cast<S*>(s.source_rows);
  if (kWithGrad) {
    for (int64_t k = 0; k < g.num_levels; ++k) {
      S* u = static_cast<S*>(s.levels[k].unit_grads);
      for (int64_t i = 0, end = (r1 - r0 + 1) * g.levels[k].C * w; i < end; ++i) u[i] = S(0);
    }
  }

  for (int64_t y = g.rows.begin0[r0]; y < g.rows.begin0[r1]; ++y) {  // the rows whose upper source is in the unit
    load_labels(labels, (n * H + y) * W, W, s.raw);
    const int64_t i0 = g.rows.i0[y], i1 = g.rows.i1[y];
    const S top_weight = static_cast<const S*>(g.rows.w0)[y], bottom_weight = static_cast<const S*>(g.rows.w1)[y];
    const S top_grad_weight = static_cast<const S*>(g.rows.grad_w0)[y];
    const S bottom_grad_weight = static_cast<const S*>(g.rows.grad_w1)[y];
    for (int64_t k = 0; k < g.num_levels; ++k) {
      const LevelArgs& a = g.levels[k];
      UnitLevelState& st = s.levels[k];
      const int64_t C = a.C;
      const auto interpolate = [&](int64_t r) {
        return [&, r](S* slot) { interpolate_columns<scalar_t, V>(a, g.cols, n, r, w, W, source_rows, slot); };
      };
      const auto keep = [](S*, int64_t) {};
      S* rows = static_cast<S*>(st.rows);
      const S* top = cached_row(rows, st.row_of, C * W, i0, keep, interpolate(i0));
      const S* bottom = cached_row(rows, st.row_of, C * W, i1, keep, interpolate(i1));
      S* grad_top = nullptr;
      S* grad_bottom = nullptr;
      if (kWithGrad) {
        S* unit_grads = static_cast<S*>(st.unit_grads);
        const auto scatter = [&](S* slot, int64_t r) {
          scatter_columns(slot, g.col_band, C, W, w, unit_grads + (r - r0) * C * w);
        };
        const auto zero = [&](S* slot) {
          for (int64_t i = 0; i < C * W; ++i) slot[i] = S(0);
        };
        S* grad_rows = static_cast<S*>(st.grad_rows);
        grad_top = cached_row(grad_rows, st.grad_row_of, C * W, i0, scatter, zero);
        grad_bottom = cached_row(grad_rows, st.grad_row_of, C * W, i1, scatter, zero);
      }
      const BlendedRows<scalar_t, V> io{
          top, bottom, W, top_weight, bottom_weight, grad_top, grad_bottom, top_grad_weight, bottom_grad_weight,
          a.grad_weights ? static_cast<const S*>(a.grad_weights) + (n * H + y) * W : nullptr};
      S* loss_out = a.loss_map ? static_cast<S*>(a.loss_map) + (n * H + y) * W : nullptr;
      st.loss_sum += level_tile<V, kWithGrad>(args, a, io, W, s.raw, static_cast<V*>(s.blocks), loss_out);
    }
  }

  int64_t class_offset = 0;
  for (int64_t k = 0; k < g.num_levels; ++k) {
    const LevelArgs& a = g.levels[k];
    UnitLevelState& st = s.levels[k];
    g.unit_sums[k * g.num_units + unit] = st.loss_sum;
    if (!kWithGrad) continue;
    const int64_t C = a.C;
    S* unit_grads = static_cast<S*>(st.unit_grads);
    S* grad_rows = static_cast<S*>(st.grad_rows);
    const int lower = st.grad_row_of[0] <= st.grad_row_of[1] ? 0 : 1;
    for (int i = lower, left = 2; left > 0; i = 1 - i, --left)  // the rows still cached, lower first
      if (st.grad_row_of[i] >= 0)
        scatter_columns(grad_rows + i * C * W, g.col_band, C, W, w, unit_grads + (st.grad_row_of[i] - r0) * C * w);
    const int64_t edge_offset = (unit * g.total_classes + class_offset) * w;
    for (int64_t r = r0; r <= r1 && r < g.h; ++r) {
      const S* src = unit_grads + (r - r0) * C * w;
      S* edge = r == r1 ? static_cast<S*>(g.halos) + edge_offset
                : r == r0 && r0 > 0 && kRoundsOnce ? static_cast<S*>(g.first_rows) + edge_offset
                                                    : nullptr;
      if (edge != nullptr) {
        for (int64_t i = 0; i < C * w; ++i) edge[i] = src[i];
        continue;
      }
      for (int64_t c = 0; c < C; ++c) {
        scalar_t* out = static_cast<scalar_t*>(a.grad) + n * a.gs[0] + c * a.gs[1] + r * a.gs[2];
        for (int64_t j = 0; j < w; ++j) out[j * a.gs[3]] = store_value<scalar_t>(src[c * w + j]);
      }
    }
    class_offset += C;
  }
}

template <typename scalar_t, typename V>
void join_unit_typed(const UpsampleGroup& g, int64_t unit) {
  using S = typename VecTraits<V>::scalar;
  const int64_t tile = unit % g.units_per_image, n = unit / g.units_per_image, r0 = tile * kUnitRows, w = g.w;
  if (tile == 0) return;
  int64_t class_offset = 0;
  for (int64_t k = 0; k < g.num_levels; ++k) {
    const LevelArgs& a = g.levels[k];
    const S* halo = static_cast<const S*>(g.halos) + ((unit - 1) * g.total_classes + class_offset) * w;
    const S* own = sizeof(scalar_t) != sizeof(S)
                       ? static_cast<const S*>(g.first_rows) + (unit * g.total_classes + class_offset) * w
                       : nullptr;  // float and double wrote their own part into the gradient
    for (int64_t c = 0; c < a.C; ++c) {
      scalar_t* out = static_cast<scalar_t*>(a.grad) + n * a.gs[0] + c * a.gs[1] + r0 * a.gs[2];
      for (int64_t j = 0; j < w; ++j) {
        const S mine = own ? own[c * w + j] : to_compute(out[j * a.gs[3]]);
        out[j * a.gs[3]] = store_value<scalar_t>(mine + halo[c * w + j]);
      }
    }
    class_offset += a.C;
  }
}

template <typename scalar_t, typename V>
void run_unit_of(const KernelArgs& args, const UpsampleGroup& g, int64_t unit, const void* labels,
                 LabelLoader load_labels, void* scratch) {
  if (g.levels[0].grad != nullptr)
    run_unit_typed<scalar_t, V, true>(args, g, unit, labels, load_labels, scratch);
  else
    run_unit_typed<scalar_t, V, false>(args, g, unit, labels, load_labels, scratch);
}

void run_unit(const KernelArgs& args, const UpsampleGroup& g, int64_t unit, const void* labels, LabelLoader load_labels,
              void* scratch) {
  switch (args.dtype) {
    case LogitType::Float:
      return run_unit_of<float, VecFloat>(args, g, unit, labels, load_labels, scratch);
    case LogitType::Half:
      return run_unit_of<Half, VecFloat>(args, g, unit, labels, load_labels, scratch);
    case LogitType::BFloat16:
      return run_unit_of<BFloat16, VecFloat>(args, g, unit, labels, load_labels, scratch);
    case LogitType::Double:
      return run_unit_of<double, VecDouble>(args, g, unit, labels, load_labels, scratch);
  }
}

void join_unit(const KernelArgs& args, const UpsampleGroup& g, int64_t unit) {
  switch (args.dtype) {
    case LogitType::Float:
      return join_unit_typed<float, VecFloat>(g, unit);
    case LogitType::Half:
      return join_unit_typed<Half, VecFloat>(g, unit);
    case LogitType::BFloat16:
      return join_unit_typed<BFloat16, VecFloat>(g, unit);
    case LogitType::Double:
      return join_unit_typed<double, VecDouble>(g, unit);
  }
}

}  // namespace HP_ISA
}  // namespace cpu
}  // namespace hierparse
