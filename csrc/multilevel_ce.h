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

#if defined(__CUDACC__)
#define HP_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define HP_HOST_DEVICE inline __attribute__((always_inline))
#endif

namespace hierparse {

// Raw label id -> class index at one level; tables hold -1 where the pixel is ignored.
template <typename label_t>
HP_HOST_DEVICE int32_t lookup_target(label_t raw, const int32_t* table_row) {
  return table_row[static_cast<int64_t>(raw)];
}

HP_HOST_DEVICE float bits_to_float(int32_t bits) {
#if defined(__CUDA_ARCH__)
  return __int_as_float(bits);
#else
  float value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
#endif
}

// exp(x) for x <= 0 (a logit minus its row max). Cephes' single-precision polynomial (about 1 ulp),
// written branch-free so plain CPU loops vectorise; 0 below the smallest normal float, NaN stays NaN.
HP_HOST_DEVICE float exp_nonpositive(float x) {
  const float xc = x > -87.0f ? x : -87.0f;  // also maps NaN to -87: no undefined conversion below
  const float n = floorf(xc * 1.44269504088896341f + 0.5f);
  const float r = (xc - n * 0.693359375f) + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const float y = p * bits_to_float((static_cast<int32_t>(n) + 127) << 23);
  return x < -87.0f ? 0.0f : (x == x ? y : x);
}

HP_HOST_DEVICE double exp_nonpositive(double x) { return exp(x); }

HP_HOST_DEVICE int32_t float_to_bits(float value) {
#if defined(__CUDA_ARCH__)
  return __float_as_int(value);
#else
  int32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  return bits;
#endif
}

// log(x) for a positive normal x (a sum of exponentials, at least 1 here). Cephes' single-precision
// polynomial (about 1 ulp), branch-free so that it vectorises like exp_nonpositive; NaN stays NaN.
HP_HOST_DEVICE float log_positive(float x) {
  const int32_t bits = float_to_bits(x);
  float e = static_cast<float>(((bits >> 23) & 0xff) - 126);
  float m = bits_to_float((bits & 0x807fffff) | 0x3f000000);  // x = m * 2^e, m in [0.5, 1)
  const bool small = m < 0.707106781186547524f;
  e = small ? e - 1.0f : e;
  m = small ? m + m - 1.0f : m - 1.0f;
  const float z = m * m;
  float y = 7.0376836292e-2f;
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
  const float result = (m + y) + 0.693359375f * e;
  return x == x ? result : x;
}

HP_HOST_DEVICE double log_positive(double x) { return log(x); }

template <typename T>
HP_HOST_DEVICE T max_value(T a, T b) {
  return b > a ? b : a;  // a NaN in b never wins; NaN logits still reach the loss through d_c
}

// Constants of one level, in the compute type T.
template <typename T>
struct LevelCoefficients {
  T one_minus_eps;  // 1 - label_smoothing
  T eps_over_c;     // label_smoothing / C
  T weight_sum;     // W = sum_c w_c
  T scale;          // gradient multiplier: level weight (/ weight sum of valid pixels for "mean")
};

// The loss of one valid pixel from its log-sum, d_y and sum_c w_c d_c (the last only with smoothing).
template <typename T>
HP_HOST_DEVICE T pixel_loss(const LevelCoefficients<T>& k, T log_sum, T d_target, T w_target,
                            T weighted_d_sum) {
  T loss = k.one_minus_eps * w_target * (log_sum - d_target);
  if (k.eps_over_c != T(0)) loss += k.eps_over_c * (k.weight_sum * log_sum - weighted_d_sum);
  return loss;
}

// Multiplier of exp(d_c) in the gradient of a pixel: ((1-eps) w_y + eps/C W) * scale / s; 0 if ignored.
template <typename T>
HP_HOST_DEVICE T softmax_coefficient(const LevelCoefficients<T>& k, T w_target, T inv_sum, bool valid) {
  return valid ? (k.one_minus_eps * w_target + k.eps_over_c * k.weight_sum) * k.scale * inv_sum : T(0);
}

// Gradient of one logit: softmax part minus the smoothing part minus the target part.
template <typename T>
HP_HOST_DEVICE T logit_gradient(const LevelCoefficients<T>& k, T exp_d, T softmax_coeff, T w_class,
                                bool valid, bool is_target, T w_target) {
  T g = exp_d * softmax_coeff;
  if (valid) g -= k.eps_over_c * w_class * k.scale;
  if (is_target) g -= k.one_minus_eps * w_target * k.scale;
  return g;
}

}  // namespace hierparse
