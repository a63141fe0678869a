// The operator schemas of the hierparse library, defined by ops.cpp (library hierparse) and by the
// CPU emulation of the CUDA kernels (library hierparse_emulated, csrc/emulate/library.cpp).
#pragma once

#include <torch/library.h>

namespace hierparse {

inline void define_ops(torch::Library& m) {
  // Remaps raw label ids through `table` to every level and computes each level's softmax
  // cross-entropy; with compute_grad, also writes d(losses)/d(logits) (already scaled) in the same
  // pass. reduction: 0 none ([L, N, H, W]), 1 mean ([L]), 2 sum ([L]). A level's logits [N, C, h, w]
  // may be smaller than the labels [N, H, W]: they are then upsampled inside the op as
  // F.interpolate(mode="bilinear", align_corners=align_corners) would, and their gradients are
  // returned at [N, C, h, w]. set_members [L, S, C]: a table entry C_l + s at level l names set s of
  // that level, scored as -log sum_c set_members[l, s, c] softmax(x_l)_c. grad_weights (reduction
  // "none" only, shaped like the losses): the
  // gradients are those of sum(grad_weights * losses), each pixel weighed before its gradient is
  // scattered to low resolution.
  m.def(
      "multilevel_cross_entropy(Tensor[] logits, Tensor labels, Tensor table, Tensor? class_weights, "
      "float[] level_weights, float label_smoothing, int ignore_index, int reduction, bool compute_grad, "
      "bool align_corners=False, Tensor? set_members=None, Tensor? grad_weights=None) -> (Tensor, Tensor[])");
  // multilevel_cross_entropy on each level's hard pixels (OHEM, ohem.h): a valid pixel is kept when its
  // target probability (plain softmax; a set's summed, member-weighed probability) is below
  // max(threshold, the min(min_kept * N, valid - 1)-th smallest of the level's); losses [L] are the mean
  // per-pixel losses over the kept pixels (0 when none), and with compute_grad the gradients are theirs.
  m.def(
      "multilevel_ohem_cross_entropy(Tensor[] logits, Tensor labels, Tensor table, Tensor? class_weights, "
      "float[] level_weights, float label_smoothing, int ignore_index, bool compute_grad, bool align_corners, "
      "Tensor? set_members, float threshold, int min_kept) -> (Tensor, Tensor[])");
  // HSSN's tree-min loss over the class tree whose nodes are the classes of all levels; `parents`
  // holds the parent class of each class of levels 1..L-1, level after level. With compute_grad,
  // also writes d(sum of grad_weights * losses)/d(logits) (grad_weights: ones when None, else
  // shaped like the losses) in the same pass. reduction as above. set_members as above: at a level
  // where the label is a set, its members carry no term and the other nodes are negatives.
  m.def(
      "tree_min_loss(Tensor[] logits, Tensor labels, Tensor table, int[] parents, float[] level_weights, "
      "float focal_gamma, int ignore_index, int reduction, bool compute_grad, Tensor? set_members=None, "
      "Tensor? grad_weights=None) -> (Tensor, Tensor[])");
  // Per-level class maps [N, H, W] (uint8 where a level's classes fit, else int64) of logits upsampled
  // to `size` as F.interpolate(mode="bilinear", align_corners=align_corners) would, decided pixel by
  // pixel without storing any full-resolution logits. ancestors [L, F]: each finest class's ancestor
  // per level (the last row 0..F-1); logits: one per level, or one for the finest level (a flat
  // model). mode: 0 independent argmax, 1 consistent path search, 2 tree (sigmoid path search).
  // covered: the output spans that top-left fraction (h, w) of every level's logits (a padded canvas).
  m.def(
      "upsample_decode(Tensor[] logits, Tensor ancestors, SymInt[] size, int mode, bool align_corners=False, "
      "float[]? covered=None) -> Tensor[]");
}

}  // namespace hierparse
