// Per-pixel arithmetic of the fused tree-min loss (HSSN), shared by the CPU and CUDA kernels so that
// the CPU tests exercise exactly the math the GPU runs.
//
// The nodes of the class tree are the classes of all levels, numbered level after level (level l
// holds nodes first[l] .. first[l + 1] - 1), so every node comes after its parent and before its
// descendants. For one valid pixel with logits x_v:
//   lo_v = min of x over v and its ancestors   (top-down; arg_lo_v: the node it comes from)
//   hi_v = max of x over v and its descendants (bottom-up; arg_hi_v: the node it comes from)
// The node of the pixel's class at each level (its label path, y_v = 1) has the term f(-lo_v), whose
// derivative -f'(-lo_v) goes to x at arg_lo_v; every other node has the term f(hi_v), derivative
// f'(hi_v) to x at arg_hi_v (f: focal_softplus). At a level where the pixel's label is a class set
// (a coarse label: a node above the level), no node is on the path: the set's members carry no term
// and every other node is negative. Level l's loss is the sum of its nodes' terms, and
// their derivatives are multiplied by the level's weight (level weight, "mean" divisor, incoming
// gradient).
#pragma once

#include <cmath>
#include <cstdint>

#include "host_device.h"

namespace hierparse {

// exp, log1p, pow and |x| in float or double: on the host the functions std::exp etc. call (expf,
// ... for float), on the device CUDA's.
HP_HOST_DEVICE float exp_of(float x) { return expf(x); }
HP_HOST_DEVICE double exp_of(double x) { return exp(x); }
HP_HOST_DEVICE float log1p_of(float x) { return log1pf(x); }
HP_HOST_DEVICE double log1p_of(double x) { return log1p(x); }
HP_HOST_DEVICE float pow_of(float x, float y) { return powf(x, y); }
HP_HOST_DEVICE double pow_of(double x, double y) { return pow(x, y); }
HP_HOST_DEVICE float abs_of(float x) { return fabsf(x); }
HP_HOST_DEVICE double abs_of(double x) { return fabs(x); }

// f(y) = sigmoid(y)^g softplus(y) and f'(y) = sigmoid(y)^g (g (1 - sigmoid(y)) softplus(y) + sigmoid(y)),
// stable for any y. A negative term -s^g log(1 - s) of s = sigmoid(x_max) is f(x_max); a positive
// term -(1 - s)^g log(s) of s = sigmoid(x_min) is f(-x_min), with derivative -f'(-x_min) in x_min.
template <typename acc_t>
HP_HOST_DEVICE void focal_softplus(acc_t y, acc_t gamma, acc_t& value, acc_t& slope) {
  const acc_t e = exp_of(-abs_of(y));
  const acc_t softplus = (y < acc_t(0) ? acc_t(0) : y) + log1p_of(e);  // max(y, 0): NaN stays NaN
  const acc_t s = y >= 0 ? 1 / (1 + e) : e / (1 + e);
  if (gamma == 0) {
    value = softplus;
    slope = s;
    return;
  }
  const acc_t one_minus_s = y >= 0 ? e / (1 + e) : 1 / (1 + e);
  const acc_t focus = pow_of(s, gamma);
  value = focus * softplus;
  slope = focus * (gamma * one_minus_s * softplus + s);
}

// The min over ancestors and max over descendants of one pixel's nodes; node_t holds a node index.
// In: hi[v] = x_v. Out: lo, arg_lo (top-down: a node's own logit wins ties with its parent's min) and
// hi, arg_hi (bottom-up: a child's max replaces its parent's only when strictly greater). NaNs follow
// the comparisons: a NaN logit is its own node's lo and hi, and no other node's.
template <typename acc_t, typename node_t>
HP_HOST_DEVICE void tree_limits(const int32_t* parent, int32_t num_nodes, acc_t* hi, node_t* arg_hi, acc_t* lo,
                                node_t* arg_lo) {
  for (int32_t v = 0; v < num_nodes; ++v) {
    const int32_t p = parent[v];
    const bool inherit = p >= 0 && lo[p] < hi[v];  // hi[v] is still x_v
    lo[v] = inherit ? lo[p] : hi[v];
    arg_lo[v] = inherit ? arg_lo[p] : static_cast<node_t>(v);
    arg_hi[v] = static_cast<node_t>(v);
  }
  for (int32_t v = num_nodes - 1; v >= 0; --v) {
    const int32_t p = parent[v];
    if (p >= 0 && hi[v] > hi[p]) {
      hi[p] = hi[v];
      arg_hi[p] = arg_hi[v];
    }
  }
}

// The terms of one valid pixel after tree_limits, level after level and node after node: loss[l] is
// the sum of level l's terms; when grad is not null (zero on entry), each term's derivative times
// weight[l] is added to grad at the node it goes to. first: [L + 1] the first node of each level, then
// the number of nodes; target[l]: the pixel's class at level l, or C_l + s for class set s there, whose
// members are the nodes v with in_set[set_first[l] + s * C_l + v - first[l]] != 0 (in_set: nullptr
// when no level has sets).
template <typename acc_t, typename node_t>
HP_HOST_DEVICE void tree_min_terms(int32_t num_levels, const int32_t* first, const int32_t* target, const acc_t* lo,
                                   const node_t* arg_lo, const acc_t* hi, const node_t* arg_hi, acc_t gamma,
                                   const acc_t* weight, acc_t* loss, acc_t* grad, const uint8_t* in_set = nullptr,
                                   const int32_t* set_first = nullptr) {
  for (int32_t l = 0; l < num_levels; ++l) {
    const int32_t classes = first[l + 1] - first[l];
    const int32_t path_node = first[l] + target[l];
    const uint8_t* members = target[l] >= classes ? in_set + set_first[l] + (target[l] - classes) * classes : nullptr;
    acc_t level_loss = 0;
    for (int32_t v = first[l]; v < first[l + 1]; ++v) {
      acc_t value, slope;
      int32_t node;
      if (members != nullptr && members[v - first[l]]) continue;  // inside the coarse label: no term
      if (v == path_node) {  // y_v = 1: f(-lo_v), derivative -f'(-lo_v)
        focal_softplus(-lo[v], gamma, value, slope);
        slope = -slope;
        node = static_cast<int32_t>(arg_lo[v]);
      } else {  // y_v = 0: f(hi_v), derivative f'(hi_v)
        focal_softplus(hi[v], gamma, value, slope);
        node = static_cast<int32_t>(arg_hi[v]);
      }
      level_loss += value;
      if (grad != nullptr) grad[node] += slope * weight[l];
    }
    loss[l] = level_loss;
  }
}

}  // namespace hierparse
