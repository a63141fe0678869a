#include "multilevel_ce_host.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "to_device.h"

namespace hierparse {
namespace {

std::string sizes_str(const at::Tensor& t) {
  std::string out = "[";
  for (int64_t i = 0; i < t.dim(); ++i) out += (i ? ", " : "") + std::to_string(t.size(i));
  return out + "]";
}

}  // namespace

void check_table_device(const char* op, const char* what, const at::Tensor& t, at::Device device) {
  TORCH_CHECK_VALUE(t.device() == device || t.is_cpu(), op, ": ", what, " on ", t.device(),
                    " but level 0 logits are on ", device, " (expected the logits' device or the CPU)");
}

void check_label_range(int64_t min_label, int64_t max_label, int64_t K, const char* op) {
  TORCH_CHECK_VALUE(min_label >= 0, op, ": labels contain raw id ", min_label, " but the table covers 0..", K - 1);
  TORCH_CHECK_VALUE(max_label < K, op, ": labels contain raw id ", max_label, " but the table covers 0..", K - 1);
}

Plan plan_levels(const char* op, at::TensorList logits, const at::Tensor& labels, const at::Tensor& table,
                 at::ArrayRef<double> level_weights, int64_t ignore_index, int64_t reduction,
                 bool smaller_logits, const c10::optional<at::Tensor>& set_members) {
  const int64_t L = static_cast<int64_t>(logits.size());
  TORCH_CHECK_VALUE(L >= 1, op, ": expected at least one level of logits");
  TORCH_CHECK_VALUE(reduction >= 0 && reduction <= 2,
                    op, ": reduction code ", reduction, " is not 0 (none), 1 (mean) or 2 (sum)");
  const at::ScalarType label_type = labels.scalar_type();
  TORCH_CHECK_VALUE(label_type == at::kByte || label_type == at::kChar || label_type == at::kShort ||
                        label_type == at::kInt || label_type == at::kLong,
                    op, ": labels must be an integer tensor of raw ids (uint8, int8, int16, "
                    "int32 or int64), got ", label_type);
  TORCH_CHECK_VALUE(labels.dim() == 3, op, ": labels must be [N, H, W], got ",
                    sizes_str(labels));
  TORCH_CHECK_VALUE(table.dim() == 2 && table.size(0) == L,
                    op, ": table must be [L, K] with L = ", L,
                    " levels of logits, got ", sizes_str(table));
  TORCH_CHECK_VALUE(table.size(1) >= 1, op, ": the table covers no raw id");
  TORCH_CHECK_VALUE(!at::isFloatingType(table.scalar_type()) && table.scalar_type() != at::kBool,
                    op, ": table must be an integer tensor, got ", table.scalar_type());
  TORCH_CHECK_VALUE(static_cast<int64_t>(level_weights.size()) == L,
                    op, ": got ", level_weights.size(), " level weights for ", L, " levels");

  const at::Device device = logits[0].device();
  const at::ScalarType dtype = logits[0].scalar_type();
  Plan plan;
  plan.N = labels.size(0);
  plan.H = labels.size(1);
  plan.W = labels.size(2);
  plan.K = table.size(1);
  plan.reduction = static_cast<Reduction>(reduction);
  plan.loss_dtype = dtype == at::kDouble ? at::kDouble : at::kFloat;

  TORCH_CHECK_VALUE(labels.device() == device, op, ": labels are on ", labels.device(),
                    " but level 0 logits are on ", device);
  check_table_device(op, "table is", table, device);
  int64_t offset = 0;
  for (int64_t l = 0; l < L; ++l) {
    const at::Tensor& x = logits[l];
    TORCH_CHECK_VALUE(x.device() == device, op, ": level ", l, " logits are on ",
                      x.device(), " but level 0 logits are on ", device);
    TORCH_CHECK_VALUE(x.scalar_type() == dtype, op, ": level ", l, " logits are ",
                      x.scalar_type(), " but level 0 logits are ", dtype);
    TORCH_CHECK_VALUE(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16,
                      op, ": logits must be float32, float64, float16 or bfloat16, got ", dtype);
    if (smaller_logits) {
      const bool fits = x.dim() == 4 && x.size(0) == plan.N &&
                        ((x.size(2) == plan.H && x.size(3) == plan.W) ||
                         (x.size(2) >= 1 && x.size(3) >= 1 && x.size(2) <= plan.H && x.size(3) <= plan.W));
      TORCH_CHECK_VALUE(fits, op, ": level ", l, " logits are ", sizes_str(x), " but labels are ", sizes_str(labels),
                        " (expected [N, C, h, w] with the labels' N and 1 <= h <= H, 1 <= w <= W: logits smaller "
                        "than the labels are upsampled bilinearly)");
    } else {
      TORCH_CHECK_VALUE(x.dim() == 4 && x.size(0) == plan.N && x.size(2) == plan.H && x.size(3) == plan.W,
                        op, ": level ", l, " logits are ", sizes_str(x),
                        " but labels are ", sizes_str(labels), " (expected [N, C, H, W] with the labels' N, H, W)");
    }
    TORCH_CHECK_VALUE(x.size(1) >= 1, op, ": level ", l, " logits have no class");
    LevelPlan level;
    level.num_classes = x.size(1);
    level.h = x.size(2);
    level.w = x.size(3);
    level.weight_offset = offset;
    level.level_weight = level_weights[l];
    offset += level.num_classes;
    plan.levels.push_back(level);
  }

  // Class sets: each row's member weights, checked; a row with one member of weight 1 is that class.
  int64_t max_sets = 0;
  at::Tensor members_cpu;
  if (set_members.has_value() && set_members->defined()) {
    const at::Tensor& m = *set_members;
    int64_t max_classes = 0;
    for (const LevelPlan& level : plan.levels) max_classes = std::max(max_classes, level.num_classes);
    TORCH_CHECK_VALUE(m.dim() == 3 && m.size(0) == L && m.size(2) >= max_classes, op,
                      ": set_members must be [L, S, C] with L = ", L, " levels and C >= ", max_classes,
                      " (the most classes of a level), got ", sizes_str(m));
    check_table_device(op, "set_members are", m, device);
    max_sets = m.size(1);
    // checked as the kernels store them: float32 (a weight that rounds to 0 or to inf counts as such)
    members_cpu = m.to(at::kCPU, at::kFloat).to(at::kDouble).contiguous();
  }
  const double* members = members_cpu.defined() ? members_cpu.data_ptr<double>() : nullptr;
  const int64_t member_stride = members_cpu.defined() ? members_cpu.size(2) : 0;
  auto set_row = [&](int64_t l, int64_t s) { return members + (l * max_sets + s) * member_stride; };
  // -2: a set with several members (or one of weight other than 1); else the class of a one-member set
  std::vector<int64_t> single(L * max_sets, -2);
  for (int64_t l = 0; l < L; ++l) {
    const int64_t C = plan.levels[l].num_classes;
    for (int64_t s = 0; s < max_sets; ++s) {
      const double* row = set_row(l, s);
      int64_t count = 0, last = -1;
      for (int64_t c = 0; c < member_stride; ++c) {
        TORCH_CHECK_VALUE(row[c] >= 0 && std::isfinite(row[c]), op, ": set ", s, " of level ", l,
                          " gives class ", c, " the member weight ", row[c], " (expected a finite weight >= 0 "
                          "in float32)");
        TORCH_CHECK_VALUE(c < C || row[c] == 0, op, ": set ", s, " of level ", l, " names class ", c,
                          ", but level ", l, " logits have ", C, " classes");
        if (row[c] > 0) {
          ++count;
          last = c;
        }
      }
      if (count == 1 && row[last] == 1.0) single[l * max_sets + s] = last;
    }
  }

  // The table: every entry a class of its level, a set of it, or ignore_index.
  plan.unscorable_level.assign(plan.K, -1);
  plan.unscorable_entry.assign(plan.K, 0);
  const at::Tensor table_cpu = table.to(at::kCPU, at::kLong).contiguous();
  const int64_t* t = table_cpu.data_ptr<int64_t>();
  at::Tensor table_i32 = at::empty({L, plan.K}, at::TensorOptions().dtype(at::kInt));
  int32_t* out = table_i32.data_ptr<int32_t>();
  for (int64_t l = 0; l < L; ++l) {
    const int64_t C = plan.levels[l].num_classes;
    for (int64_t k = 0; k < plan.K; ++k) {
      const int64_t entry = t[l * plan.K + k];
      if (entry >= C && entry < C + max_sets && entry != ignore_index) {
        const int64_t s = entry - C;
        bool empty = true;
        for (int64_t c = 0; c < C; ++c) empty = empty && set_row(l, s)[c] == 0;
        TORCH_CHECK_VALUE(!empty, op, ": table maps raw id ", k, " to set ", s, " of level ", l,
                          ", which has no member");
        const int64_t one = single[l * max_sets + s];
        out[l * plan.K + k] = static_cast<int32_t>(one >= 0 ? one : entry);
        continue;
      }
      TORCH_CHECK_VALUE(entry == ignore_index || entry >= 0, op, ": table maps raw id ", k, " to class ", entry,
                        " at level ", l, " (expected a class 0..", C - 1, " or ignore_index ", ignore_index, ")");
      if (entry != ignore_index && entry >= C) {  // raises if a label uses it (check_scorable)
        if (plan.unscorable_level[k] < 0) plan.unscorable_level[k] = l, plan.unscorable_entry[k] = entry;
        out[l * plan.K + k] = -1;
        continue;
      }
      out[l * plan.K + k] = entry == ignore_index ? -1 : static_cast<int32_t>(entry);
    }
  }
  // Pack the sets of each level that the table uses as sets ([S_l, C_l] rows, S_l = max_sets).
  if (members != nullptr && max_sets > 0) {
    bool any_set = false;
    for (int64_t i = 0; i < L * plan.K; ++i) {
      const int64_t l = i / plan.K;
      any_set = any_set || (out[i] >= plan.levels[l].num_classes);
    }
    if (any_set) {
      std::vector<float> packed;
      for (int64_t l = 0; l < L; ++l) {
        LevelPlan& level = plan.levels[l];
        level.num_sets = max_sets;
        level.set_offset = l * max_sets;
        level.member_offset = static_cast<int64_t>(packed.size());
        for (int64_t s = 0; s < max_sets; ++s)
          for (int64_t c = 0; c < level.num_classes; ++c) packed.push_back(static_cast<float>(set_row(l, s)[c]));
      }
      plan.member_rows_host = at::tensor(packed, at::kFloat);
      plan.member_rows = to_device(plan.member_rows_host, device);
    }
  }
  plan.table_host = table_i32;
  plan.table = to_device(table_i32, device);
  return plan;
}

void check_scorable(const char* op, const Plan& plan, const int64_t* counts) {
  for (int64_t k = 0; k < plan.K; ++k) {
    const int64_t l = plan.unscorable_level[k];
    if (l < 0 || counts[k] == 0) continue;
    const int64_t C = plan.levels[l].num_classes, entry = plan.unscorable_entry[k];
    TORCH_CHECK_VALUE(false, op, ": labels contain raw id ", k, ", which the table maps to ", entry, " at level ", l,
                      ", but level ", l, " logits have ", C, " classes (0..", C - 1, ")",
                      plan.levels[l].num_sets ? std::string(" and ") + std::to_string(plan.levels[l].num_sets) +
                                                    " class sets"
                                              : std::string(""),
                      "; an entry C + s names class set s (a coarse label), which needs set_members");
  }
}

Plan plan_multilevel_ce(at::TensorList logits, const at::Tensor& labels, const at::Tensor& table,
                        const c10::optional<at::Tensor>& class_weights,
                        at::ArrayRef<double> level_weights, double label_smoothing,
                        int64_t ignore_index, int64_t reduction, bool align_corners,
                        const c10::optional<at::Tensor>& set_members) {
  TORCH_CHECK_VALUE(label_smoothing >= 0.0 && label_smoothing <= 1.0,
                    "multilevel_cross_entropy: label_smoothing must lie in [0, 1], got ", label_smoothing);
  Plan plan = plan_levels("multilevel_cross_entropy", logits, labels, table, level_weights, ignore_index, reduction,
                          /*smaller_logits=*/true, set_members);
  plan.label_smoothing = label_smoothing;
  plan.align_corners = align_corners;
  const at::Device device = logits[0].device();
  const int64_t total_classes = plan.levels.back().weight_offset + plan.levels.back().num_classes;

  // Class weights, packed level after level.
  if (class_weights.has_value() && class_weights->defined()) {
    const at::Tensor& w = *class_weights;
    TORCH_CHECK_VALUE(w.dim() == 1 && w.size(0) == total_classes,
                      "multilevel_cross_entropy: packed class weights must have ", total_classes,
                      " entries (the classes of all levels), got ", sizes_str(w));
    check_table_device("multilevel_cross_entropy", "class weights are", w, device);
    const at::Tensor w_cpu = w.to(at::kCPU, at::kDouble).contiguous();
    const double* wp = w_cpu.data_ptr<double>();
    for (LevelPlan& level : plan.levels) {
      for (int64_t c = 0; c < level.num_classes; ++c) level.weight_sum += wp[level.weight_offset + c];
    }
    plan.class_weights = w.is_cpu() ? to_device(w.to(at::kFloat).contiguous(), device) : w.to(at::kFloat).contiguous();
    plan.class_weights_host = w_cpu.to(at::kFloat).to(at::kDouble);  // the values the kernels read
  } else {
    for (LevelPlan& level : plan.levels) level.weight_sum = static_cast<double>(level.num_classes);
  }
  // The class weight of a set: its members' class weights averaged by member weight (1 without class weights).
  if (plan.member_rows.defined()) {
    const at::Tensor members = plan.member_rows_host.to(at::kDouble);
    const at::Tensor& w_cpu = plan.class_weights_host;
    for (const LevelPlan& level : plan.levels) {
      for (int64_t s = 0; s < level.num_sets; ++s) {
        const double* row = members.data_ptr<double>() + level.member_offset + s * level.num_classes;
        double weighted = 0, total = 0;
        for (int64_t c = 0; c < level.num_classes; ++c) {
          const double w = w_cpu.defined() ? w_cpu.data_ptr<double>()[level.weight_offset + c] : 1.0;
          weighted += row[c] * w;
          total += row[c];
        }
        plan.set_weight_values.push_back(total > 0 ? weighted / total : 0.0);
      }
    }
    plan.set_weights = to_device(at::tensor(plan.set_weight_values, at::kDouble), device);
    at::Tensor log_rows = at::full_like(members, -INFINITY);
    at::Tensor classes = at::zeros({members.numel()}, at::kInt);
    at::Tensor sizes = at::zeros({static_cast<int64_t>(plan.set_weight_values.size())}, at::kInt);
    for (const LevelPlan& level : plan.levels) {
      for (int64_t s = 0; s < level.num_sets; ++s) {
        const int64_t row = level.member_offset + s * level.num_classes;
        const double* weights = members.const_data_ptr<double>() + row;
        int32_t& size = sizes.data_ptr<int32_t>()[level.set_offset + s];
        for (int64_t c = 0; c < level.num_classes; ++c) {
          if (weights[c] <= 0) continue;
          log_rows.data_ptr<double>()[row + c] = std::log(weights[c]);
          classes.data_ptr<int32_t>()[row + size++] = static_cast<int32_t>(c);
        }
      }
    }
    plan.set_log_rows = to_device(log_rows, device);
    plan.set_classes = to_device(classes, device);
    plan.set_sizes = to_device(sizes, device);
  }
  return plan;
}

at::Tensor checked_pixel_grad_weights(const Plan& plan, const c10::optional<at::Tensor>& grad_weights,
                                      at::Device device) {
  if (!grad_weights.has_value() || !grad_weights->defined()) return at::Tensor();
  const at::Tensor& g = *grad_weights;
  TORCH_CHECK_VALUE(plan.reduction == Reduction::None,
                    "multilevel_cross_entropy: grad_weights are for reduction \"none\" only");
  const std::vector<int64_t> shape{static_cast<int64_t>(plan.levels.size()), plan.N, plan.H, plan.W};
  TORCH_CHECK_VALUE(g.sizes() == at::IntArrayRef(shape), "multilevel_cross_entropy: grad_weights must have the "
                    "losses' shape ", at::IntArrayRef(shape), ", got ", g.sizes());
  TORCH_CHECK_VALUE(g.device() == device, "multilevel_cross_entropy: grad_weights are on ", g.device(),
                    " but level 0 logits are on ", device);
  return g.to(plan.loss_dtype).contiguous();
}

void weigh_full_size_grads(const Plan& plan, std::vector<at::Tensor>& grads, const at::Tensor& grad_weights) {
  if (!grad_weights.defined()) return;
  for (size_t l = 0; l < grads.size(); ++l) {
    if (plan.levels[l].h != plan.H || plan.levels[l].w != plan.W) continue;
    grads[l].mul_(grad_weights[l].unsqueeze(1).to(grads[l].scalar_type()));
  }
}

void set_level_scales(Plan& plan, const at::Tensor& label_counts) {
  const at::Tensor counts = label_counts.to(at::kCPU, at::kLong).contiguous();
  const int64_t* n = counts.data_ptr<int64_t>();
  const int32_t* t = plan.table_host.const_data_ptr<int32_t>();
  const at::Tensor& weights = plan.class_weights_host;
  for (size_t l = 0; l < plan.levels.size(); ++l) {
    LevelPlan& level = plan.levels[l];
    if (plan.reduction != Reduction::Mean) {
      level.grad_scale = level.loss_scale = level.level_weight;
      continue;
    }
    double divisor = 0;
    for (int64_t k = 0; k < plan.K; ++k) {
      const int32_t target = t[l * plan.K + k];
      if (target < 0 || n[k] == 0) continue;
      const bool is_set = target >= level.num_classes;
      const double w = is_set   ? plan.set_weight_values[level.set_offset + target - level.num_classes]
                       : weights.defined() ? weights.data_ptr<double>()[level.weight_offset + target]
                                           : 1.0;
      divisor += static_cast<double>(n[k]) * w;
    }
    // A level without valid pixels contributes loss 0 and gradient 0 (PyTorch would give NaN).
    level.grad_scale = level.loss_scale = divisor > 0 ? level.level_weight / divisor : 0.0;
  }
}

LevelSets level_sets(const Plan& plan, size_t l) {
  const LevelPlan& level = plan.levels[l];
  if (level.num_sets == 0) return LevelSets{nullptr, nullptr, nullptr, nullptr};
  return LevelSets{plan.set_log_rows.const_data_ptr<double>() + level.member_offset,
                   plan.set_classes.const_data_ptr<int32_t>() + level.member_offset,
                   plan.set_sizes.const_data_ptr<int32_t>() + level.set_offset,
                   plan.set_weights.const_data_ptr<double>() + level.set_offset};
}

at::Tensor allocate_losses(const Plan& plan, const at::Tensor& like) {
  const int64_t L = static_cast<int64_t>(plan.levels.size());
  const auto options = like.options().dtype(plan.loss_dtype);
  if (plan.reduction == Reduction::None) return at::empty({L, plan.N, plan.H, plan.W}, options);
  return at::empty({L}, options);
}

std::vector<at::Tensor> allocate_grads(at::TensorList logits, bool compute_grad) {
  std::vector<at::Tensor> grads;
  if (!compute_grad) return grads;
  for (const at::Tensor& x : logits) grads.push_back(at::empty_like(x));
  return grads;
}

void write_level_totals(at::Tensor& losses, const double* partials, int64_t chunks,
                        const std::vector<double>& scales) {
  std::vector<double> totals(scales.size(), 0.0);
  for (size_t l = 0; l < scales.size(); ++l) {
    for (int64_t c = 0; c < chunks; ++c) totals[l] += partials[l * chunks + c];
    totals[l] *= scales[l];
  }
  losses.copy_(at::tensor(totals, at::kDouble));
}

}  // namespace hierparse
