#include "tree_min_host.h"

namespace hierparse {

TreePlan plan_tree_min(at::TensorList logits, const at::Tensor& labels, const at::Tensor& table,
                       at::IntArrayRef parents, at::ArrayRef<double> level_weights, double focal_gamma,
                       int64_t ignore_index, int64_t reduction, const c10::optional<at::Tensor>& set_members,
                       const c10::optional<at::Tensor>& grad_weights) {
  TORCH_CHECK_VALUE(focal_gamma >= 0.0, "tree_min_loss: focal_gamma must be >= 0, got ", focal_gamma);
  TreePlan tree;
  tree.plan = plan_levels("tree_min_loss", logits, labels, table, level_weights, ignore_index, reduction,
                          /*smaller_logits=*/false, set_members);
  tree.focal_gamma = focal_gamma;
  const Plan& plan = tree.plan;
  const int64_t L = static_cast<int64_t>(plan.levels.size());
  const int64_t num_nodes = plan.levels.back().weight_offset + plan.levels.back().num_classes;
  TORCH_CHECK_VALUE(static_cast<int64_t>(parents.size()) == num_nodes - plan.levels[0].num_classes,
                    "tree_min_loss: got ", parents.size(), " parent indices but levels 1..", L - 1, " have ",
                    num_nodes - plan.levels[0].num_classes, " classes");
  tree.parent.assign(plan.levels[0].num_classes, -1);
  for (int64_t l = 1; l < L; ++l) {
    const LevelPlan& up = plan.levels[l - 1];
    for (int64_t c = 0; c < plan.levels[l].num_classes; ++c) {
      const int64_t p = parents[plan.levels[l].weight_offset - plan.levels[0].num_classes + c];
      TORCH_CHECK_VALUE(p >= 0 && p < up.num_classes, "tree_min_loss: class ", c, " of level ", l, " has parent ", p,
                        ", but level ", l - 1, " has ", up.num_classes, " classes (0..", up.num_classes - 1, ")");
      tree.parent.push_back(static_cast<int32_t>(up.weight_offset + p));
    }
  }
  for (const LevelPlan& level : plan.levels) tree.first.push_back(static_cast<int32_t>(level.weight_offset));
  tree.first.push_back(static_cast<int32_t>(num_nodes));
  if (plan.member_rows.defined()) {  // the member weights only say who is in: a set has no weights here
    const at::Tensor& members = plan.member_rows_host;
    for (int64_t i = 0; i < members.numel(); ++i) tree.in_set.push_back(members.data_ptr<float>()[i] > 0);
    for (const LevelPlan& level : plan.levels) tree.set_first.push_back(static_cast<int32_t>(level.member_offset));
  }

  const int32_t* t = plan.table_host.const_data_ptr<int32_t>();
  tree.valid.assign(plan.K, 1);
  for (int64_t l = 0; l < L; ++l)
    for (int64_t k = 0; k < plan.K; ++k)
      if (t[l * plan.K + k] < 0) tree.valid[k] = 0;

  if (grad_weights.has_value() && grad_weights->defined()) {
    const at::Tensor& g = *grad_weights;
    const std::vector<int64_t> shape = plan.reduction == Reduction::None
                                           ? std::vector<int64_t>{L, plan.N, plan.H, plan.W}
                                           : std::vector<int64_t>{L};
    TORCH_CHECK_VALUE(g.sizes() == at::IntArrayRef(shape), "tree_min_loss: grad_weights must have the losses' shape ",
                      at::IntArrayRef(shape), ", got ", g.sizes());
    TORCH_CHECK_VALUE(g.device() == logits[0].device(), "tree_min_loss: grad_weights are on ", g.device(),
                      " but level 0 logits are on ", logits[0].device());
    tree.grad_weights = g.to(plan.loss_dtype);
  }
  return tree;
}

}  // namespace hierparse
