// The cross-entropy of one level's logits smaller than the labels, upsampled bilinearly on the fly, in
// gather form: the algorithm of the CUDA kernel (cuda/multilevel_ce_kernels.cuh). The CPU runs the same
// functions when HIERPARSE_CPU_UPSAMPLING=gather (cpu/upsampled_ce_gather_cpu.cpp), so the CPU tests
// exercise the arithmetic the GPU runs; the CPU's own, faster algorithm is cpu/upsample_kernel_impl.h.
//
// A work item is one low-resolution pixel (n, i, j) and one chunk of kClassChunk classes. It visits
// every full-resolution pixel that (i, j) is a bilinear source of (rows y with i0(y) in {i - 1, i},
// columns x with j0(x) in {j - 1, j}), recomputes that pixel's interpolated logits (four reads per
// class), its softmax statistics and its gradients, and adds each gradient times the pixel's weight
// on (i, j) into registers in a fixed order, then writes them once: no atomics, no full-resolution
// tensor, bitwise reproducible. A pixel is recomputed by each of its (up to four) sources and chunks;
// its loss is counted once, by the item of its top-left source (i0, j0) in chunk 0.
//
// The interpolation is ATen's CUDA upsample_bilinear2d: source indices and weights in the compute type
// (float, or double for double logits), the value h0 (w0 a + w1 b) + h1 (w0 c + w1 d) stored in the
// logits' type, as F.interpolate's output is; the same expressions, so equal up to how the compiler
// fuses multiply-adds (the CPU build does not fuse them as nvcc does).
#pragma once

#include <cstdint>

#include "host_device.h"
#include "multilevel_ce.h"

namespace hierparse {

constexpr int kClassChunk = 16;  // classes whose gradients one work item keeps in registers

// One output position's two sources along an axis and their weights.
template <typename acc_t>
struct BilinearTap {
  int64_t i0, i1;
  acc_t lambda0, lambda1;
};

// The bilinear map of `out` positions from `in` (ATen's area_pixel_compute_scale and
// area_pixel_compute_source_index, for an output size given without a scale factor).
template <typename acc_t>
struct BilinearAxis {
  int64_t in = 1, out = 1;
  acc_t scale = 0;
  bool align_corners = false;

  static BilinearAxis make(int64_t in, int64_t out, bool align_corners) {
    BilinearAxis a;
    a.in = in;
    a.out = out;
    a.align_corners = align_corners;
    a.scale = align_corners ? (out > 1 ? static_cast<acc_t>(in - 1) / static_cast<acc_t>(out - 1) : acc_t(0))
                            : static_cast<acc_t>(in) / static_cast<acc_t>(out);
    return a;
  }

  // Output o's position in the input (area_pixel_compute_source_index); its integer part is the
  // first source. Which pixels an item visits and which it owns both come from here.
  HP_HOST_DEVICE acc_t source(int64_t o) const {
    if (align_corners) return scale * static_cast<acc_t>(o);
    const acc_t s = scale * (static_cast<acc_t>(o) + acc_t(0.5)) - acc_t(0.5);
    return s < acc_t(0) ? acc_t(0) : s;
  }

  HP_HOST_DEVICE int64_t first_source(int64_t o) const { return static_cast<int64_t>(source(o)); }

  HP_HOST_DEVICE BilinearTap<acc_t> tap(int64_t o) const {
    const acc_t s = source(o);
    BilinearTap<acc_t> t;
    t.i0 = static_cast<int64_t>(s);  // truncation, as ATen's `const int h1 = h1r`
    t.i1 = t.i0 + (t.i0 < in - 1 ? 1 : 0);
    t.lambda1 = s - static_cast<acc_t>(t.i0);
    t.lambda0 = acc_t(1) - t.lambda1;
    return t;
  }

  // The first output whose first source is at least i (out when there is none): the first source
  // never decreases along the axis, so start from the inverse map's estimate and step to the boundary.
  HP_HOST_DEVICE int64_t first_output(int64_t i) const {
    if (i <= 0) return 0;
    if (i >= in) return out;
    int64_t o = 0;
    if (scale > acc_t(0)) {
      const acc_t estimate = align_corners ? static_cast<acc_t>(i) / scale
                                           : (static_cast<acc_t>(i) + acc_t(0.5)) / scale - acc_t(0.5);
      o = estimate <= acc_t(0) ? 0 : estimate >= static_cast<acc_t>(out) ? out : static_cast<int64_t>(estimate);
    }
    while (o > 0 && first_source(o - 1) >= i) --o;
    while (o < out && first_source(o) < i) ++o;
    return o;
  }

  // The weight of source i in output o's value (0 unless i is one of its sources).
  HP_HOST_DEVICE static acc_t weight_of(const BilinearTap<acc_t>& t, int64_t i) {
    return (t.i0 == i ? t.lambda0 : acc_t(0)) + (t.i1 == i ? t.lambda1 : acc_t(0));
  }
};

// Everything a work item of one level reads and writes.
template <typename scalar_t, typename acc_t, typename label_t>
struct UpsampledLevel {
  const scalar_t* logits;
  int64_t xs[4];            // logits strides (N, C, h, w)
  scalar_t* grad;           // nullptr without gradients
  int64_t gs[4];            // gradient strides
  const label_t* labels;
  int64_t ls[3];            // label strides (N, H, W)
  int64_t N, C, h, w, H, W;
  BilinearAxis<acc_t> rows, cols;
  const int32_t* table;     // row of raw id -> class, -1 = ignored (ids already range-checked)
  const float* class_w;     // C weights or nullptr (all 1)
  LevelSets sets;           // class sets: table entries C + s (multilevel_ce.h)
  acc_t* loss_map;          // [N, H, W] for reduction "none" (level-weighted losses), else nullptr
  const acc_t* grad_weights;  // [N, H, W] per-pixel gradient weights (reduction "none"), or nullptr
  LevelCoefficients<acc_t> k;
  bool smoothing;

  // Work items: pixels of the logits times class chunks (one chunk without gradients).
  HP_HOST_DEVICE int64_t num_chunks() const { return grad ? (C + kClassChunk - 1) / kClassChunk : 1; }
  HP_HOST_DEVICE int64_t num_items() const { return num_chunks() * N * h * w; }
};

// Class c's logit at a full-resolution pixel with sources ty (rows) and tx (columns), rounded to the
// logits' type as F.interpolate stores it; `image` points at image n's logits.
template <typename scalar_t, typename acc_t, typename label_t>
HP_HOST_DEVICE acc_t upsampled_logit(const UpsampledLevel<scalar_t, acc_t, label_t>& a, const scalar_t* image,
                                     int64_t c, const BilinearTap<acc_t>& ty, const BilinearTap<acc_t>& tx) {
  const scalar_t* x = image + c * a.xs[1];
  const auto at = [&](int64_t r, int64_t col) { return static_cast<acc_t>(x[r * a.xs[2] + col * a.xs[3]]); };
  const acc_t value = ty.lambda0 * (tx.lambda0 * at(ty.i0, tx.i0) + tx.lambda1 * at(ty.i0, tx.i1)) +
                      ty.lambda1 * (tx.lambda0 * at(ty.i1, tx.i0) + tx.lambda1 * at(ty.i1, tx.i1));
  return static_cast<acc_t>(static_cast<scalar_t>(value));
}

// One full-resolution pixel's loss and what its gradients need (multilevel_ce.h's arithmetic).
template <typename acc_t>
struct PixelSoftmax {
  int32_t target;  // -1 when ignored, C + s for class set s
  acc_t max, coefficient, w_target, loss;
  const double* set_log_row;  // the set's row of log weights, nullptr unless the target is a set
  SetScore<acc_t> set;
};

template <typename scalar_t, typename acc_t, typename label_t>
HP_HOST_DEVICE PixelSoftmax<acc_t> pixel_softmax(const UpsampledLevel<scalar_t, acc_t, label_t>& a,
                                                 const scalar_t* image, int64_t n, int64_t y, int64_t x,
                                                 const BilinearTap<acc_t>& ty, const BilinearTap<acc_t>& tx) {
  PixelSoftmax<acc_t> p;
  p.target = lookup_target(a.labels[n * a.ls[0] + y * a.ls[1] + x * a.ls[2]], a.table);
  const bool valid = p.target >= 0;
  acc_t m = upsampled_logit(a, image, 0, ty, tx);
  for (int64_t c = 1; c < a.C; ++c) m = max_value(m, upsampled_logit(a, image, c, ty, tx));
  acc_t sum = 0, weighted_d = 0;
  for (int64_t c = 0; c < a.C; ++c) {
    const acc_t d = upsampled_logit(a, image, c, ty, tx) - m;
    sum += exp_nonpositive(d);
    if (a.smoothing) weighted_d += (a.class_w ? static_cast<acc_t>(a.class_w[c]) : acc_t(1)) * d;
  }
  p.max = m;
  p.set_log_row = nullptr;
  acc_t d_target = 0;
  p.w_target = 0;
  if (p.target >= a.C) {  // a class set: its log-sum-exp is the target logit
    p.set_log_row = a.sets.log_rows + (p.target - a.C) * a.C;
    const auto logit = [&](int64_t c) { return upsampled_logit(a, image, c, ty, tx); };
    p.set = score_set<acc_t>(a.sets, p.target - a.C, a.C, logit);
    p.w_target = static_cast<acc_t>(a.sets.weights[p.target - a.C]);
    d_target = p.set.log_sum() - m;
  } else if (valid) {
    p.w_target = a.class_w ? static_cast<acc_t>(a.class_w[p.target]) : acc_t(1);
    d_target = upsampled_logit(a, image, p.target, ty, tx) - m;
  }
  p.loss = valid ? pixel_loss(a.k, log_positive(sum), d_target, p.w_target, weighted_d) : acc_t(0);
  p.coefficient = softmax_coefficient(a.k, p.w_target, acc_t(1) / sum, valid);
  return p;
}

// Runs work item `item` (chunk-major, then n, i, j: consecutive items are neighbours in a row of the
// logits): writes the gradients of its chunk of classes at (n, i, j), writes the per-pixel losses it
// owns (reduction "none"), and returns the sum of the losses it owns (unscaled).
template <typename scalar_t, typename acc_t, typename label_t>
HP_HOST_DEVICE double upsampled_item(const UpsampledLevel<scalar_t, acc_t, label_t>& a, int64_t item) {
  const int64_t j = item % a.w;
  int64_t rest = item / a.w;
  const int64_t i = rest % a.h;
  rest /= a.h;
  const int64_t n = rest % a.N;
  const int64_t c0 = (rest / a.N) * kClassChunk;
  const bool with_grad = a.grad != nullptr;
  const bool counts_losses = c0 == 0;
  const scalar_t* image = a.logits + n * a.xs[0];

  // Without gradients an item visits only the pixels it owns (first source (i, j)).
  const int64_t y_begin = a.rows.first_output(with_grad ? i - 1 : i), y_end = a.rows.first_output(i + 1);
  const int64_t x_begin = a.cols.first_output(with_grad ? j - 1 : j), x_end = a.cols.first_output(j + 1);
  acc_t grads[kClassChunk];
  for (int k = 0; k < kClassChunk; ++k) grads[k] = acc_t(0);
  double loss_sum = 0;
  for (int64_t y = y_begin; y < y_end; ++y) {
    const BilinearTap<acc_t> ty = a.rows.tap(y);
    const acc_t wy = BilinearAxis<acc_t>::weight_of(ty, i);
    for (int64_t x = x_begin; x < x_end; ++x) {
      const BilinearTap<acc_t> tx = a.cols.tap(x);
      const PixelSoftmax<acc_t> p = pixel_softmax(a, image, n, y, x, ty, tx);
      const int64_t pixel = (n * a.H + y) * a.W + x;
      if (counts_losses && ty.i0 == i && tx.i0 == j) {
        loss_sum += static_cast<double>(p.loss);
        if (a.loss_map != nullptr) a.loss_map[pixel] = p.loss * a.k.scale;
      }
      if (!with_grad) continue;
      const acc_t weight = wy * BilinearAxis<acc_t>::weight_of(tx, j);
      const acc_t pixel_weight = a.grad_weights ? a.grad_weights[pixel] : acc_t(1);
      const bool valid = p.target >= 0;
HP_UNROLL
      for (int k = 0; k < kClassChunk; ++k) {
        const int64_t c = c0 + k;
        if (c >= a.C) break;
        const acc_t x_c = upsampled_logit(a, image, c, ty, tx);
        const acc_t e = exp_nonpositive(x_c - p.max);
        const acc_t w_class = a.class_w ? static_cast<acc_t>(a.class_w[c]) : acc_t(1);
        acc_t g = logit_gradient(a.k, e, p.coefficient, w_class, valid, p.target == c, p.w_target);
        if (p.set_log_row != nullptr) g -= a.k.one_minus_eps * p.w_target * a.k.scale * p.set.share(x_c, p.set_log_row[c]);
        // F.cross_entropy's gradient is stored in the logits' type before F.interpolate's backward
        grads[k] += weight * (static_cast<acc_t>(static_cast<scalar_t>(g)) * pixel_weight);
      }
    }
  }
  if (with_grad) {
    scalar_t* out = a.grad + n * a.gs[0] + i * a.gs[2] + j * a.gs[3];
    HP_UNROLL
    for (int k = 0; k < kClassChunk; ++k) {  // constant bounds: grads stays in registers
      if (c0 + k >= a.C) break;
      out[(c0 + k) * a.gs[1]] = static_cast<scalar_t>(grads[k]);
    }
  }
  return loss_sum;
}

}  // namespace hierparse
