// The row kernel of hierparse::upsample_decode, included once per instruction set after vec.h (by
// way of tile_kernel_impl.h). Rows of one image go in order; per level, each low-resolution row is
// interpolated horizontally once (two are cached), each output row is the vertical blend of two of
// them ([C, W], in L2), and then the pixels are decided a vector at a time, one pixel per lane,
// as upsample_decode.h describes; a pixel the fast path is unsure of is decided again in double
// from the logits themselves. No full-resolution map of more than one row exists.
#ifndef HP_ISA
#error "include tile_kernel_impl.h (with HP_ISA defined) before decode_kernel_impl.h"
#endif

#include "cpu/decode_kernel.h"
#include "upsample_decode.h"

namespace hierparse {
namespace cpu {
namespace HP_ISA {

// Row r of image n of a level, interpolated horizontally to the W output columns: out [C, W].
template <typename scalar_t, typename S>
void decode_columns(const DecodeLevelArgs& a, int64_t n, int64_t r, int64_t W, S* out) {
  const S* w0 = static_cast<const S*>(a.cols.w0);
  const S* w1 = static_cast<const S*>(a.cols.w1);
  for (int64_t c = 0; c < a.C; ++c) {
    const scalar_t* src = static_cast<const scalar_t*>(a.logits) + n * a.xs[0] + c * a.xs[1] + r * a.xs[2];
    S* row = out + c * W;
    for (int64_t x = 0; x < W; ++x)
      row[x] = to_compute(src[a.cols.i0[x] * a.xs[3]]) * w0[x] + to_compute(src[a.cols.i1[x] * a.xs[3]]) * w1[x];
  }
}

// One level's state in a thread's scratch: two cached source rows, tagged (-1 when empty), and the
// current output row.
template <typename S>
struct DecodeLevelRows {
  S* cached[2];
  int64_t row_of[2];
  S* current;
};

// The cached horizontal interpolation of source row r, computed into the slot not holding `keep`.
template <typename scalar_t, typename S>
const S* source_row(const DecodeLevelArgs& a, DecodeLevelRows<S>& s, int64_t n, int64_t r, int64_t keep, int64_t W) {
  for (int k = 0; k < 2; ++k)
    if (s.row_of[k] == r) return s.cached[k];
  const int slot = s.row_of[0] == keep ? 1 : 0;
  decode_columns<scalar_t>(a, n, r, W, s.cached[slot]);
  s.row_of[slot] = r;
  return s.cached[slot];
}

template <typename V>
HP_INLINE V vabs(V v) {
  return v < 0 ? -v : v;
}

template <typename V>
HP_INLINE V vmax(V a, V b) {
  return a > b ? a : b;
}

// The first max of a running comparison, a vector of pixels at a time (upsample_decode.h).
template <typename V>
struct RunningMax {
  using M = typename VecTraits<V>::mask;
  V best, second;
  M winner;

  HP_INLINE void start(V v) {
    best = v;
    second = V{} - INFINITY;
    winner = M{};
  }
  HP_INLINE void step(V v, int64_t index) {
    const M higher = v > best;
    second = higher ? best : vmax(second, v);
    best = higher ? v : best;
    winner = higher ? M{} + static_cast<int32_t>(index) : winner;
  }
  // Lanes whose lead is under the tolerance (all ones) for a compared magnitude.
  HP_INLINE M unsure(V magnitude, double tolerance) const {
    return best - second < (magnitude + 1) * static_cast<typename VecTraits<V>::scalar>(tolerance);
  }
};

// Pixel (n, y, x) decided in double from the logits (the exact path); `values` holds one double per
// class of every level.
template <typename scalar_t>
void decide_exactly(const DecodeArgs& args, int64_t n, int64_t y, int64_t x, double* values, int64_t* winners) {
  const DecodeShape& d = args.shape;
  int64_t offsets[kDecodeMaxLevels];
  int64_t offset = 0;
  for (int l = 0; l < d.levels_in; ++l) {
    const DecodeLevelArgs& a = args.levels[l];
    offsets[l] = offset;
    const double ly = a.rows.lambda[y], lx = a.cols.lambda[x];
    const int64_t r0 = a.rows.i0[y] * a.xs[2], r1 = a.rows.i1[y] * a.xs[2];
    const int64_t c0 = a.cols.i0[x] * a.xs[3], c1 = a.cols.i1[x] * a.xs[3];
    for (int64_t c = 0; c < a.C; ++c) {
      const scalar_t* plane = static_cast<const scalar_t*>(a.logits) + n * a.xs[0] + c * a.xs[1];
      auto at = [&](int64_t index) { return static_cast<double>(to_compute(plane[index])); };
      values[offset + c] = (1 - ly) * ((1 - lx) * at(r0 + c0) + lx * at(r0 + c1)) +
                           ly * ((1 - lx) * at(r1 + c0) + lx * at(r1 + c1));
    }
    offset += a.C;
  }
  decode_pixel<double>(d, [&](int l, int64_t c) { return values[offsets[l] + c]; }, 0.0, winners);
}

HP_INLINE void store_class(const DecodeArgs& args, int k, int64_t index, int64_t value) {
  if (args.output_bytes[k] == 1) {
    static_cast<uint8_t*>(args.outputs[k])[index] = static_cast<uint8_t>(value);
  } else {
    static_cast<int64_t*>(args.outputs[k])[index] = value;
  }
}

template <typename scalar_t, typename V>
void decode_rows(const DecodeArgs& args, int64_t n, int64_t y_begin, int64_t y_end, void* scratch) {
  using S = typename VecTraits<V>::scalar;
  using M = typename VecTraits<V>::mask;
  constexpr int kLanes = VecTraits<V>::lanes;
  const DecodeShape& d = args.shape;
  const int64_t W = args.W;
  const bool flat = d.levels_in == 1 && d.levels_out > 1;
  const bool by_level = d.mode == kIndependent || flat;
  // float64 logits are decided in double already: nothing to decide again
  const double tolerance = sizeof(S) == sizeof(double) ? 0.0 : kDecodeTolerance;

  char* base = static_cast<char*>(scratch);
  DecodeLevelRows<S> rows[kDecodeMaxLevels];
  for (int l = 0; l < d.levels_in; ++l) {
    const int64_t plane = args.levels[l].C * W;
    rows[l] = DecodeLevelRows<S>{{reinterpret_cast<S*>(base), reinterpret_cast<S*>(base) + plane}, {-1, -1},
                                 reinterpret_cast<S*>(base) + 2 * plane};
    base += (3 * plane * int64_t(sizeof(S)) + 63) / 64 * 64;
  }
  double* exact_values = reinterpret_cast<double*>(base);

  for (int64_t y = y_begin; y < y_end; ++y) {
    for (int l = 0; l < d.levels_in; ++l) {
      const DecodeLevelArgs& a = args.levels[l];
      const int64_t r0 = a.rows.i0[y], r1 = a.rows.i1[y];
      const S* top = source_row<scalar_t>(a, rows[l], n, r0, r1, W);
      const S* bottom = source_row<scalar_t>(a, rows[l], n, r1, r0, W);
      const S h0 = static_cast<const S*>(a.rows.w0)[y], h1 = static_cast<const S*>(a.rows.w1)[y];
      S* current = rows[l].current;
      for (int64_t i = 0; i < a.C * W; i += kLanes) {
        const int count = static_cast<int>(a.C * W - i < kLanes ? a.C * W - i : kLanes);
        V v = load<V>(top + i, 1, count) * h0 + load<V>(bottom + i, 1, count) * h1;
        if (d.mode == kTree && !flat) {
          const V t = exp_nonpositive(-vabs(v));
          v = v >= 0 ? 1 / (1 + t) : t / (1 + t);
        }
        store<1>(current + i, 1, count, &v, false);
      }
    }

    const int64_t row_index = (n * args.H + y) * W;
    for (int64_t x0 = 0; x0 < W; x0 += kLanes) {
      const int count = static_cast<int>(W - x0 < kLanes ? W - x0 : kLanes);
      M winners[kDecodeMaxLevels];
      M unsure = M{};
      RunningMax<V> run{};
      if (by_level) {
        for (int l = 0; l < d.levels_in; ++l) {
          const S* current = rows[l].current + x0;
          run.start(load<V>(current, 1, count));
          V magnitude = vabs(run.best);
          for (int64_t c = 1; c < args.levels[l].C; ++c) {
            const V v = load<V>(current + c * W, 1, count);
            magnitude = vmax(magnitude, vabs(v));
            run.step(v, c);
          }
          unsure |= run.unsure(magnitude, tolerance);
          winners[l] = run.winner;
        }
      } else {
        V magnitude = V{};
        for (int64_t f = 0; f < d.F; ++f) {
          V path = V{}, size = V{};
          for (int l = 0; l < d.levels_in; ++l) {
            const V v = load<V>(rows[l].current + d.ancestors[l * d.F + f] * W + x0, 1, count);
            path += v;
            size += vabs(v);
          }
          magnitude = vmax(magnitude, size);
          if (f == 0) {
            run.start(path);
          } else {
            run.step(path, f);
          }
        }
        unsure = run.unsure(magnitude, tolerance);
        winners[d.levels_out - 1] = run.winner;
      }

      for (int j = 0; j < count; ++j) {
        const int64_t index = row_index + x0 + j;
        int64_t decided[kDecodeMaxLevels];
        if (unsure[j]) {
          decide_exactly<scalar_t>(args, n, y, x0 + j, exact_values, decided);
        } else if (by_level && !flat) {
          for (int l = 0; l < d.levels_out; ++l) decided[l] = winners[l][j];
        } else {
          const int64_t fine = winners[flat ? 0 : d.levels_out - 1][j];
          for (int l = 0; l < d.levels_out; ++l) decided[l] = d.ancestors[l * d.F + fine];
        }
        for (int l = 0; l < d.levels_out; ++l) store_class(args, l, index, decided[l]);
      }
    }
  }
}

void run_decode(const DecodeArgs& args, int64_t n, int64_t y_begin, int64_t y_end, void* scratch) {
  switch (args.dtype) {
    case LogitType::Float: return decode_rows<float, VecFloat>(args, n, y_begin, y_end, scratch);
    case LogitType::Double: return decode_rows<double, VecDouble>(args, n, y_begin, y_end, scratch);
    case LogitType::Half: return decode_rows<Half, VecFloat>(args, n, y_begin, y_end, scratch);
    case LogitType::BFloat16: return decode_rows<BFloat16, VecFloat>(args, n, y_begin, y_end, scratch);
  }
}

}  // namespace HP_ISA
}  // namespace cpu
}  // namespace hierparse
