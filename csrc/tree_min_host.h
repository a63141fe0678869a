// Host-side part of the fused tree-min loss: argument checks (all before any kernel runs) and the
// class tree as one parent array over all nodes (node = class of a level, numbered level after level).
#pragma once

#include <ATen/ATen.h>

#include <vector>

#include "multilevel_ce_host.h"

namespace hierparse {

struct TreePlan {
  Plan plan;                   // levels, int32 table, shapes, reduction (scales set by the backend)
  std::vector<int32_t> parent;  // per node: its parent node, -1 for the classes of level 0
  std::vector<int32_t> first;   // per level: its first node, then the number of nodes (L + 1 entries)
  std::vector<uint8_t> valid;   // per raw id: 1 when no level ignores it
  // Class sets (coarse labels): in_set [sum_l S_l C_l] 1 where class c is a member of set s of level l,
  // at set_first[l] + s * C_l + c; empty when no level has sets.
  std::vector<uint8_t> in_set;
  std::vector<int32_t> set_first;
  double focal_gamma = 0;
  at::Tensor grad_weights;  // the losses' incoming gradient as the losses' dtype, or undefined (ones)
};

// Validates every argument; `parents` holds the parent class (at level l-1) of every class of the
// levels l = 1..L-1, level after level. Throws c10::Error naming the level and offending values.
TreePlan plan_tree_min(at::TensorList logits, const at::Tensor& labels, const at::Tensor& table,
                       at::IntArrayRef parents, at::ArrayRef<double> level_weights, double focal_gamma,
                       int64_t ignore_index, int64_t reduction, const c10::optional<at::Tensor>& set_members,
                       const c10::optional<at::Tensor>& grad_weights);

}  // namespace hierparse
