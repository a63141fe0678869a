// Host-side part of the fused multi-level ops shared by the CPU and CUDA backends: argument checks
// (all before any kernel runs), the int32 lookup table, per-level scales, output tensors.
#pragma once

#include <ATen/ATen.h>

#include <vector>

#include "multilevel_ce.h"

namespace hierparse {

enum class Reduction : int64_t { None = 0, Mean = 1, Sum = 2 };

struct LevelPlan {
  int64_t num_classes = 0;
  int64_t h = 0, w = 0;       // the logits' size: the labels' H, W, or smaller (upsampled in the op)
  int64_t weight_offset = 0;  // index of this level's first class when all levels' classes are packed
  double weight_sum = 0;      // W = sum of this level's class weights
  double level_weight = 1;
  int64_t num_sets = 0;       // class sets of this level: table entries num_classes .. num_classes + num_sets - 1
  int64_t set_offset = 0;     // index of this level's first set when all levels' sets are packed
  int64_t member_offset = 0;  // index of this level's first member weight in the packed [S_l, C_l] rows
  double grad_scale = 0;      // multiplier of the per-pixel gradient
  double loss_scale = 0;      // multiplier of the summed per-pixel losses ("mean"/"sum")
};

struct Plan {
  at::Tensor table;          // int32 [L, K] on the logits' device, -1 where ignored
  at::Tensor table_host;     // the same on the host (what the planning reads: no copy back from a GPU)
  at::Tensor class_weights;  // float32 [sum C_l] on the logits' device, or undefined
  at::Tensor class_weights_host;  // float64 on the host, or undefined
  // Class sets (labels naming a node above a level), packed level after level, on the logits' device:
  // member_rows float32 [sum S_l C_l] (set s of level l: its C_l member weights, 0 = not a member),
  // set_weights float64 [sum S_l] (the class weight of each set); undefined when no level has a set.
  at::Tensor member_rows, set_weights;
  at::Tensor member_rows_host;  // member_rows on the host
  std::vector<double> set_weight_values;  // set_weights on the host
  // The same sets as the kernels read them (multilevel_ce.h's LevelSets), on the logits' device:
  // set_log_rows float64 [sum S_l C_l] (log member weights, -inf off the set), set_classes int32
  // [sum S_l C_l] (the first set_sizes[s] entries of row s are its members), set_sizes int32 [sum S_l].
  at::Tensor set_log_rows, set_classes, set_sizes;
  // Raw ids whose table entry at some level is past its classes and sets (e.g. a class set given without
  // set_members): the level (-1: none) and the entry. They are ignored in the int32 table and raise as
  // soon as a label uses them (check_scorable), so a table may hold entries that no label needs.
  std::vector<int64_t> unscorable_level, unscorable_entry;
  std::vector<LevelPlan> levels;
  int64_t N = 0, H = 0, W = 0, K = 0;
  Reduction reduction = Reduction::Mean;
  double label_smoothing = 0;
  bool align_corners = false;  // of the bilinear upsampling of levels smaller than the labels
  at::ScalarType loss_dtype = at::kFloat;  // float32, or float64 for float64 logits
};

// The checks and plan shared by the fused ops (op names the operator in messages): levels of logits
// against labels and table, the reduction code, the int32 table; no class weights. With
// smaller_logits, a level's logits may be smaller than the labels (at least 1 x 1), else they must
// have the labels' size. set_members [L, S, >= max C_l] (float, >= 0) lets table entries C_l + s name
// set s of level l; a set with one member of weight 1 becomes that class (the same arithmetic).
Plan plan_levels(const char* op, at::TensorList logits, const at::Tensor& labels, const at::Tensor& table,
                 at::ArrayRef<double> level_weights, int64_t ignore_index, int64_t reduction,
                 bool smaller_logits = false, const c10::optional<at::Tensor>& set_members = c10::nullopt);

// Validates every argument and prepares the table and weights; throws c10::Error with a message
// naming the level and the offending values.
Plan plan_multilevel_ce(at::TensorList logits, const at::Tensor& labels, const at::Tensor& table,
                        const c10::optional<at::Tensor>& class_weights,
                        at::ArrayRef<double> level_weights, double label_smoothing,
                        int64_t ignore_index, int64_t reduction, bool align_corners,
                        const c10::optional<at::Tensor>& set_members);

// The grad_weights of multilevel_cross_entropy (for reduction "none" only, shaped like the losses),
// checked and converted to the loss type, contiguous; undefined when not given.
at::Tensor checked_pixel_grad_weights(const Plan& plan, const c10::optional<at::Tensor>& grad_weights,
                                      at::Device device);

// Multiplies each level's gradients at the labels' size by its plane of grad_weights [L, N, H, W]
// (levels upsampled in the op are weighed by their kernel, before the scatter).
void weigh_full_size_grads(const Plan& plan, std::vector<at::Tensor>& grads, const at::Tensor& grad_weights);

// Raises when a label uses a raw id that plan.unscorable_level marks; counts: the label histogram [K].
void check_scorable(const char* op, const Plan& plan, const int64_t* counts);

// Raises unless a table-like argument (`what` names it: "table is", ...) is on the logits' device or
// on the CPU. A CPU table is read at plan time without a copy back from the device, so a caller that
// keeps its tables on the CPU saves a host sync per call.
void check_table_device(const char* op, const char* what, const at::Tensor& t, at::Device device);

// Raises unless every label id lies in 0..K-1.
void check_label_range(int64_t min_label, int64_t max_label, int64_t K,
                       const char* op = "multilevel_cross_entropy");

// Sets each level's gradient and loss scales from the label histogram (CPU int64 [K]): for "mean"
// the divisor is the class-weight sum over valid pixels (a level without one gets scale 0).
void set_level_scales(Plan& plan, const at::Tensor& label_counts);

// Level l's constants of the per-pixel arithmetic (multilevel_ce.h) in the compute type S.
template <typename S>
LevelCoefficients<S> level_coefficients(const Plan& plan, size_t l) {
  const LevelPlan& lp = plan.levels[l];
  return LevelCoefficients<S>{static_cast<S>(1.0 - plan.label_smoothing),
                              static_cast<S>(plan.label_smoothing / static_cast<double>(lp.num_classes)),
                              static_cast<S>(lp.weight_sum), static_cast<S>(lp.grad_scale)};
}

// Output tensors: losses ([L], or [L, N, H, W] for reduction "none") and, when asked, gradients
// with the layout of each level's logits.
// Level l's class sets on the logits' device (all nullptr when it has none).
LevelSets level_sets(const Plan& plan, size_t l);

at::Tensor allocate_losses(const Plan& plan, const at::Tensor& like);

// Writes losses[l] = scales[l] * (sum of partials[l * chunks + c] over c), the chunks added in
// order, so the result has the same bits for any number of threads.
void write_level_totals(at::Tensor& losses, const double* partials, int64_t chunks,
                        const std::vector<double>& scales);
std::vector<at::Tensor> allocate_grads(at::TensorList logits, bool compute_grad);

}  // namespace hierparse
