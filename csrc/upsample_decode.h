// What the CPU and CUDA kernels of hierparse::upsample_decode share: the bilinear taps of an output
// pixel (ATen's upsample_bilinear2d, in double), the per-pixel decision of every mode and the
// tolerance below which a float32 decision is redone in double.
//
// A pixel's decision is made from the levels' interpolated logits v_l[c]:
//   independent: per level, the first class of highest v_l (a flat model: its finest level, and the
//                coarse classes are the finest one's ancestors);
//   consistent:  the first finest class f of highest sum_l v_l[a_l(f)] (a_l: ancestor at level l),
//                the most probable root-to-leaf path: log-softmax subtracts one constant per level
//                and pixel, which never changes the winner, so no exponential is computed;
//   tree:        the same path search over sigmoid(v_l) (HSSN, for tree-min models).
// The fast path runs in float32; where its winner leads the runner-up by less than
// kDecodeTolerance * (1 + the magnitude of what was compared), far above float32's rounding of
// that comparison, the pixel is decided again in double. So every map equals the float64 decode
// (F.interpolate in float64, then argmax or path search) except where two classes tie within
// float64 rounding, and exact ties go to the lowest class index, as argmax does.
#pragma once

#include <cmath>
#include <cstdint>

#include "host_device.h"

namespace hierparse {

enum DecodeMode : int { kIndependent = 0, kConsistent = 1, kTree = 2 };

constexpr int kDecodeMaxLevels = 8;
constexpr double kDecodeTolerance = 1.0 / 16384;  // 2^-14 relative: 128 float32 epsilons

// One axis of the bilinear map: output o reads inputs i0 and i1 with weights 1 - lambda and lambda.
struct DecodeTap {
  int64_t i0, i1;
  double lambda;
};

// ATen's area_pixel_compute_scale: input pixels per output pixel. `covered` > 0: the output spans
// that fraction of the input from its start, as upsample_bilinear2d maps it with the scale factor
// out / (covered * in); ignored with align_corners (as ATen ignores scale factors there).
HP_HOST_DEVICE double decode_ratio(int64_t in, int64_t out, bool align_corners, double covered) {
  if (align_corners) return out > 1 ? static_cast<double>(in - 1) / static_cast<double>(out - 1) : 0.0;
  if (covered > 0) return 1.0 / (static_cast<double>(out) / (covered * static_cast<double>(in)));
  return static_cast<double>(in) / static_cast<double>(out);
}

// ATen's compute_source_index_and_lambda in double (its floorf included): output o's two inputs.
HP_HOST_DEVICE DecodeTap decode_tap(int64_t o, int64_t in, int64_t out, double ratio, bool align_corners) {
  if (in == out) return DecodeTap{o, o, 0.0};
  double src = align_corners ? ratio * static_cast<double>(o) : ratio * (static_cast<double>(o) + 0.5) - 0.5;
  if (!align_corners && src < 0) src = 0;
  int64_t i0 = static_cast<int64_t>(floorf(static_cast<float>(src)));
  i0 = i0 < in - 1 ? i0 : in - 1;
  double lambda = src - static_cast<double>(i0);
  lambda = lambda < 0 ? 0 : lambda > 1 ? 1 : lambda;
  return DecodeTap{i0, i0 + (i0 < in - 1 ? 1 : 0), lambda};
}

// The levels of one decode: `levels_in` score maps (1 for a flat model) for `levels_out` output
// maps; ancestors [levels_out, F] holds each finest class's ancestor per level (the last row is
// the identity).
struct DecodeShape {
  int mode;
  int levels_in, levels_out;
  int64_t F;
  int64_t classes[kDecodeMaxLevels];  // per input level
  const int64_t* ancestors;
};

template <typename S>
HP_HOST_DEVICE S decode_sigmoid(S v) {
  const S t = exp(-(v < 0 ? -v : v));
  return v >= 0 ? S(1) / (S(1) + t) : t / (S(1) + t);
}

// One step of a running first max: whether v beats `best` (strictly: ties keep the earlier class);
// updates the best and the runner-up.
template <typename S>
HP_HOST_DEVICE bool decode_step(S v, S& best, S& second) {
  if (v > best) {
    second = best;
    best = v;
    return true;
  }
  second = v > second ? v : second;
  return false;
}

// Decides one pixel from value(l, c), the interpolated logit of class c of input level l: writes
// out[l] for every output level and returns false when a winner's lead is under the tolerance (the
// caller then decides again in double; `tolerance` 0 accepts every decision).
template <typename S, typename Value>
HP_HOST_DEVICE bool decode_pixel(const DecodeShape& d, Value value, S tolerance, int64_t* out) {
  const bool flat = d.levels_in == 1 && d.levels_out > 1;
  bool sure = true;
  if (d.mode == kIndependent || flat) {
    for (int l = 0; l < d.levels_in; ++l) {
      S best = value(l, 0), second = -INFINITY, magnitude = best < 0 ? -best : best;
      int64_t winner = 0;
      for (int64_t c = 1; c < d.classes[l]; ++c) {
        const S v = value(l, c);
        magnitude = (v < 0 ? -v : v) > magnitude ? (v < 0 ? -v : v) : magnitude;
        if (decode_step(v, best, second)) winner = c;
      }
      sure = sure && !(best - second < tolerance * (S(1) + magnitude));
      if (flat) {
        for (int k = 0; k < d.levels_out; ++k) out[k] = d.ancestors[k * d.F + winner];
      } else {
        out[l] = winner;
      }
    }
    return sure;
  }
  S best = -INFINITY, second = -INFINITY, magnitude = 0;
  int64_t winner = 0;
  for (int64_t f = 0; f < d.F; ++f) {
    S path = 0, size = 0;
    for (int l = 0; l < d.levels_in; ++l) {
      S v = value(l, d.ancestors[l * d.F + f]);
      v = d.mode == kTree ? decode_sigmoid(v) : v;
      path += v;
      size += v < 0 ? -v : v;
    }
    magnitude = size > magnitude ? size : magnitude;
    if (f == 0) {
      best = path;
    } else if (decode_step(path, best, second)) {
      winner = f;
    }
  }
  for (int k = 0; k < d.levels_out; ++k) out[k] = d.ancestors[k * d.F + winner];
  return !(best - second < tolerance * (S(1) + magnitude));
}

}  // namespace hierparse
