#include "upsample_decode_host.h"


namespace hierparse {

namespace {

std::vector<DecodeTap> axis_taps(int64_t in, int64_t out, bool align_corners, double covered) {
  const double ratio = decode_ratio(in, out, align_corners, covered);
  std::vector<DecodeTap> taps;
  taps.reserve(out);
  for (int64_t o = 0; o < out; ++o) taps.push_back(decode_tap(o, in, out, ratio, align_corners));
  return taps;
}

}  // namespace

DecodePlan plan_decode(at::TensorList logits, const at::Tensor& ancestors, at::IntArrayRef size, int64_t mode,
                       bool align_corners, c10::optional<at::ArrayRef<double>> covered) {
  const char* op = "upsample_decode";
  const int64_t L = static_cast<int64_t>(logits.size());
  TORCH_CHECK_VALUE(mode >= 0 && mode <= 2, op, ": mode must be 0 (independent), 1 (consistent) or 2 (tree), got ",
                    mode);
  TORCH_CHECK_VALUE(L >= 1 && L <= kDecodeMaxLevels, op, ": expected 1 to ", kDecodeMaxLevels,
                    " levels of logits, got ", L);
  TORCH_CHECK_VALUE(size.size() == 2 && size[0] >= 0 && size[1] >= 0, op, ": size must be [H, W] (not negative), got ",
                    size);
  TORCH_CHECK_VALUE(ancestors.dim() == 2 && ancestors.scalar_type() == at::kLong && ancestors.device().is_cpu(), op,
                    ": ancestors must be an int64 CPU tensor [levels, finest classes], got ", ancestors.scalar_type(),
                    " ", ancestors.sizes(), " on ", ancestors.device());
  const int64_t levels_out = ancestors.size(0), F = ancestors.size(1);
  TORCH_CHECK_VALUE(levels_out >= 1 && levels_out <= kDecodeMaxLevels && (L == levels_out || L == 1), op, ": got ", L,
                    " levels of logits for ", levels_out, " levels of ancestors (expected one per level, or one for "
                    "the finest level)");
  TORCH_CHECK_VALUE(!covered.has_value() || (covered->size() == 2 && !align_corners && (*covered)[0] > 0 &&
                                             (*covered)[0] <= 1 && (*covered)[1] > 0 && (*covered)[1] <= 1),
                    op, ": covered must be two fractions in (0, 1], without align_corners");

  DecodePlan plan;
  plan.N = logits[0].size(0);
  plan.H = size[0];
  plan.W = size[1];
  const auto device = logits[0].device();
  const auto dtype = logits[0].scalar_type();
  for (int64_t l = 0; l < L; ++l) {
    const at::Tensor& x = logits[l];
    TORCH_CHECK_VALUE(x.dim() == 4 && x.size(0) == plan.N && x.size(1) >= 1 && x.size(2) >= 1 && x.size(3) >= 1,
                      op, ": logits of level ", l, " must be [", plan.N, ", C, h, w] with C, h, w >= 1, got ",
                      x.sizes());
    TORCH_CHECK_VALUE(x.device() == device && x.scalar_type() == dtype, op, ": logits of level ", l, " are ",
                      x.scalar_type(), " on ", x.device(), ", level 0's ", dtype, " on ", device);
    TORCH_CHECK_VALUE(at::isFloatingType(dtype), op, ": logits must be floating point, got ", dtype);
  }
  TORCH_CHECK_VALUE(logits[L - 1].size(1) == F, op, ": the finest logits have ", logits[L - 1].size(1),
                    " classes but ancestors cover ", F, " finest classes");

  plan.ancestors = ancestors.contiguous();
  const int64_t* a = plan.ancestors.data_ptr<int64_t>();
  plan.shape.mode = static_cast<int>(mode);
  plan.shape.levels_in = static_cast<int>(L);
  plan.shape.levels_out = static_cast<int>(levels_out);
  plan.shape.F = F;
  plan.shape.ancestors = a;
  for (int64_t k = 0; k < levels_out; ++k) {
    // a flat model's coarse levels have at most as many classes as the finest one
    const int64_t classes = L == levels_out ? logits[k].size(1) : F;
    for (int64_t f = 0; f < F; ++f) {
      const int64_t v = a[k * F + f];
      TORCH_CHECK_VALUE(v >= 0 && v < classes, op, ": finest class ", f, " has ancestor ", v, " at level ", k,
                        ", which has ", classes, " classes");
      TORCH_CHECK_VALUE(k < levels_out - 1 || v == f, op, ": the last row of ancestors must be 0..", F - 1,
                        ", got ", v, " at ", f);
    }
    plan.outputs.push_back(at::empty({plan.N, plan.H, plan.W},
                                     logits[0].options().dtype(classes <= 256 ? at::kByte : at::kLong)));
  }
  for (int64_t l = 0; l < L; ++l) {
    const at::Tensor& x = logits[l];
    plan.shape.classes[l] = x.size(1);
    plan.levels.push_back(DecodeLevelPlan{
        x.size(1), x.size(2), x.size(3),
        axis_taps(x.size(2), plan.H, align_corners, covered ? (*covered)[0] : 0.0),
        axis_taps(x.size(3), plan.W, align_corners, covered ? (*covered)[1] : 0.0)});
  }
  return plan;
}

}  // namespace hierparse
