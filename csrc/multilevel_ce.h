// Per-pixel arithmetic of the fused multi-level cross-entropy, shared by the CPU and CUDA kernels
// so that the CPU tests exercise exactly the math the GPU runs.
//
// For one pixel of one level with logits x_c (C classes), target y, class weights w_c
// (W = sum_c w_c), label smoothing eps, max m = max_c x_c, d_c = x_c - m, s = sum_c exp(d_c):
//   lse - x_c = log(s) - d_c
//   loss      = (1 - eps) w_y (log s - d_y) + (eps / C) sum_c w_c (log s - d_c)
//   dloss/dx_c = exp(d_c)/s ((1 - eps) w_y + (eps / C) W) - (eps / C) w_c - (1 - eps) w_y [c == y]
// which is exactly F.cross_entropy(weight=w, label_smoothing=eps) per pixel. Gradients are
// multiplied by `scale` (level weight, divided by the mean's weight sum for reduction="mean").
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "class_sets.h"
#include "host_device.h"

namespace hierparse {

// The functions below are templates over the value type T: a float or double on the GPU and for
// single pixels, or (on the CPU) a GCC vector of floats that holds one pixel per lane. Masks M are
// bool for scalars and the integer vectors that comparisons give for vectors; `T{}` is zero.

// Raw label id -> class index at one level; tables hold -1 where the pixel is ignored.
template <typename label_t>
HP_HOST_DEVICE int32_t lookup_target(label_t raw, const int32_t* table_row) {
  return table_row[static_cast<int64_t>(raw)];
}

// The unsigned integer type with the bits of a float type (specialised for CPU vectors in cpu/vec.h).
template <typename T>
struct BitsOf;
template <>
struct BitsOf<float> {
  using type = uint32_t;
};

template <typename To, typename From>
HP_HOST_DEVICE To bit_cast(const From& from) {
  static_assert(sizeof(To) == sizeof(From), "bit_cast between types of different sizes");
  To to;
  memcpy(&to, &from, sizeof(To));
  return to;
}

// exp(x) for x <= 0 (a logit minus its row max). Cephes' single-precision polynomial (about 1 ulp),
// branch-free so that it vectorises: n = round(x / ln 2) comes from adding 1.5 * 2^23 + 127, which
// also leaves n + 127 in the low bits, so 2^n is those bits shifted into the exponent field.
// 0 below -87 (and for -inf), NaN stays NaN.
template <typename T>
HP_HOST_DEVICE T exp_nonpositive(T x) {
  using U = typename BitsOf<T>::type;
  constexpr float kShift = 12582912.0f + 127.0f;
  const T t = x * 1.44269504088896341f + kShift;
  const T n = t - kShift;
  const T r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  T p = T{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const T y = p * bit_cast<T>(static_cast<U>(bit_cast<U>(t) << 23));
  return x < -87.0f ? T{} : y;  // NaN fails the test and keeps the NaN that y carries
}

HP_HOST_DEVICE double exp_nonpositive(double x) { return exp(x); }

// log(x) for a positive normal x (a sum of exponentials, at least 1 here). Cephes' single-precision
// polynomial (about 1 ulp), branch-free so that it vectorises like exp_nonpositive; NaN stays NaN.
template <typename T>
HP_HOST_DEVICE T log_positive(T x) {
  using U = typename BitsOf<T>::type;
  const U bits = bit_cast<U>(x);
  // The biased exponent read as a float (2^23 + e is exact), minus 126: x = m * 2^e, m in [0.5, 1).
  T e = bit_cast<T>(static_cast<U>(((bits >> 23) & 0xffu) | 0x4b000000u)) - (8388608.0f + 126.0f);
  T m = bit_cast<T>(static_cast<U>((bits & 0x807fffffu) | 0x3f000000u));
  const auto small = m < 0.707106781186547524f;
  e = small ? e - 1.0f : e;
  m = small ? m + m - 1.0f : m - 1.0f;
  const T z = m * m;
  T y = T{} + 7.0376836292e-2f;
  y = y * m - 1.1514610310e-1f;
  y = y * m + 1.1676998740e-1f;
  y = y * m - 1.2420140846e-1f;
  y = y * m + 1.4249322787e-1f;
  y = y * m - 1.6668057665e-1f;
  y = y * m + 2.0000714765e-1f;
  y = y * m - 2.4999993993e-1f;
  y = y * m + 3.3333331174e-1f;
  y = y * m * z;
  y += -2.12194440e-4f * e;
  y += -0.5f * z;
  const T result = (m + y) + 0.693359375f * e;
  return x == x ? result : x;
}

HP_HOST_DEVICE double log_positive(double x) { return log(x); }

template <typename T>
HP_HOST_DEVICE T max_value(T a, T b) {
  return b > a ? b : a;  // a NaN in b never wins; NaN logits still reach the loss through d_c
}

// Constants of one level, in the scalar compute type S.
template <typename S>
struct LevelCoefficients {
  S one_minus_eps;  // 1 - label_smoothing
  S eps_over_c;     // label_smoothing / C
  S weight_sum;     // W = sum_c w_c
  S scale;          // gradient multiplier: level weight (/ weight sum of valid pixels for "mean")
};

// The loss of one valid pixel from its log-sum, d_y and sum_c w_c d_c (the last only with smoothing).
template <typename S, typename T>
HP_HOST_DEVICE T pixel_loss(const LevelCoefficients<S>& k, T log_sum, T d_target, T w_target,
                            T weighted_d_sum) {
  T loss = k.one_minus_eps * w_target * (log_sum - d_target);
  if (k.eps_over_c != S(0)) loss += k.eps_over_c * (k.weight_sum * log_sum - weighted_d_sum);
  return loss;
}

// Multiplier of exp(d_c) in the gradient of a pixel: ((1-eps) w_y + eps/C W) * scale / s; 0 if ignored.
template <typename S, typename T, typename M>
HP_HOST_DEVICE T softmax_coefficient(const LevelCoefficients<S>& k, T w_target, T inv_sum, M valid) {
  return valid ? (k.one_minus_eps * w_target + k.eps_over_c * k.weight_sum) * k.scale * inv_sum : T{};
}

// Gradient of one logit: softmax part minus the smoothing part minus the target part.
template <typename S, typename T, typename M>
HP_HOST_DEVICE T logit_gradient(const LevelCoefficients<S>& k, T exp_d, T softmax_coeff, S w_class,
                                M valid, M is_target, T w_target) {
  T g = exp_d * softmax_coeff;
  if (k.eps_over_c != S(0)) g = valid ? g - k.eps_over_c * w_class * k.scale : g;
  return is_target ? g - k.one_minus_eps * w_target * k.scale : g;
}

// Libm's exp and log in the compute type (expf/logf for float; the CUDA math library on the GPU),
// for the class-set terms, which are not bounded as d_c <= 0 and s >= 1 are.
HP_HOST_DEVICE float precise_exp(float x) { return expf(x); }
HP_HOST_DEVICE double precise_exp(double x) { return exp(x); }
HP_HOST_DEVICE float precise_log(float x) { return logf(x); }
HP_HOST_DEVICE double precise_log(double x) { return log(x); }

// A pixel labelled with class set s of a level (table entry C + s, a node above the level) is scored
// by the marginal likelihood: its "target logit" is log sum_c a_c exp(x_c) over the members c, with
// member weights a_c (the level's sets as the kernels read them: class_sets.h).
// SetScore holds that log-sum-exp as top = max_c (x_c + log a_c) and sum = sum_c exp(x_c + log a_c -
// top) over the members, and gives each member's share of the set's probability.
template <typename S>
struct SetScore {
  S top, sum;

  HP_HOST_DEVICE bool finite() const { return top != S(INFINITY) && top != S(-INFINITY); }
  // Every member at -inf (the loss is +inf), or one at +inf: as torch.logsumexp.
  HP_HOST_DEVICE S log_sum() const { return finite() ? top + precise_log(sum) : top; }
  // A member's share of the set's probability, a_c exp(x_c) / sum_k a_k exp(x_k), from its term of sum.
  HP_HOST_DEVICE S share_of(S term) const { return term / sum; }
  // The share of class c with logit x and log weight log_a (0 off the set, or when top is infinite).
  HP_HOST_DEVICE S share(S x, double log_a) const {
    return finite() && log_a != -INFINITY ? share_of(precise_exp(x + static_cast<S>(log_a) - top)) : S(0);
  }
};

struct IgnoreTerms {
  template <typename S>
  HP_HOST_DEVICE void operator()(int64_t, S) const {}
};

// Set s's score (C classes in the level) from logit(c), the pixel's class-c logit in the compute type;
// on_term(c, term) sees each member's term of sum (none when top is infinite).
template <typename S, typename Logit, typename OnTerm = IgnoreTerms>
HP_HOST_DEVICE SetScore<S> score_set(const LevelSets& sets, int64_t s, int64_t C, const Logit& logit,
                                     const OnTerm& on_term = OnTerm{}) {
  const int32_t* classes = sets.classes + s * C;
  const double* log_row = sets.log_rows + s * C;
  const int32_t size = sets.sizes[s];
  SetScore<S> score{S(-INFINITY), S(0)};
  for (int32_t k = 0; k < size; ++k) {
    const S v = logit(classes[k]) + static_cast<S>(log_row[classes[k]]);
    score.top = v > score.top ? v : score.top;  // fmax: a NaN never wins
  }
  if (!score.finite()) return score;
  for (int32_t k = 0; k < size; ++k) {
    const int32_t c = classes[k];
    const S term = precise_exp(logit(c) + static_cast<S>(log_row[c]) - score.top);
    score.sum += term;
    on_term(c, term);
  }
  return score;
}

}  // namespace hierparse
