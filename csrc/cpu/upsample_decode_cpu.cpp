// CPU implementation of hierparse::upsample_decode: the plan's taps as the row kernel's tables, and
// threads over bands of output rows (decode_kernel_impl.h, compiled per instruction set). Each row
// is computed the same way whichever band it falls in, so results do not depend on the thread count.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "cpu/decode_kernel.h"
#include "upsample_decode_host.h"

namespace hierparse {
namespace {

constexpr int64_t kRowsPerBand = 16;  // rows of one image a thread takes at a time (sharing source rows)

// One axis of one level as the kernel reads it; weights in the compute type `S`.
template <typename S>
struct AxisTables {
  std::vector<int64_t> i0, i1;
  std::vector<S> w0, w1;
  std::vector<double> lambda;

  explicit AxisTables(const std::vector<DecodeTap>& taps) {
    for (const DecodeTap& t : taps) {
      i0.push_back(t.i0);
      i1.push_back(t.i1);
      w0.push_back(static_cast<S>(1.0 - t.lambda));
      w1.push_back(static_cast<S>(t.lambda));
      lambda.push_back(t.lambda);
    }
  }
  cpu::DecodeAxis view() const { return {i0.data(), i1.data(), w0.data(), w1.data(), lambda.data()}; }
};

cpu::LogitType logit_type(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat: return cpu::LogitType::Float;
    case at::kDouble: return cpu::LogitType::Double;
    case at::kHalf: return cpu::LogitType::Half;
    case at::kBFloat16: return cpu::LogitType::BFloat16;
    default: TORCH_CHECK_VALUE(false, "upsample_decode: unsupported logits dtype ", dtype);
  }
}

template <typename S>
std::vector<at::Tensor> decode_with(const DecodePlan& plan, at::TensorList logits) {
  std::vector<AxisTables<S>> rows, cols;
  std::vector<cpu::DecodeLevelArgs> levels;
  for (size_t l = 0; l < plan.levels.size(); ++l) {
    rows.emplace_back(plan.levels[l].rows);
    cols.emplace_back(plan.levels[l].cols);
  }
  for (size_t l = 0; l < plan.levels.size(); ++l) {
    const at::Tensor& x = logits[l];
    levels.push_back(cpu::DecodeLevelArgs{x.data_ptr(), x.size(1), x.size(2), x.size(3),
                                          {x.stride(0), x.stride(1), x.stride(2), x.stride(3)},
                                          rows[l].view(), cols[l].view()});
  }
  std::vector<void*> outputs;
  std::vector<int> output_bytes;
  for (const at::Tensor& out : plan.outputs) {
    outputs.push_back(out.data_ptr());
    output_bytes.push_back(static_cast<int>(out.element_size()));
  }
  const cpu::DecodeArgs args{levels.data(), plan.shape, logit_type(logits[0].scalar_type()), plan.H, plan.W,
                             outputs.data(), output_bytes.data()};
  const int64_t scratch_bytes = cpu::decode_scratch_bytes(args, sizeof(S));
  const int64_t bands_per_image = (plan.H + kRowsPerBand - 1) / kRowsPerBand;
  const cpu::DecodeKernel kernel = cpu::selected_capability().run_decode;
  at::parallel_for(0, plan.N * bands_per_image, 1, [&](int64_t begin, int64_t end) {
    std::unique_ptr<char[]> memory(new char[scratch_bytes + 64]);
    void* scratch = reinterpret_cast<void*>((reinterpret_cast<uintptr_t>(memory.get()) + 63) / 64 * 64);
    for (int64_t band = begin; band < end; ++band) {
      const int64_t n = band / bands_per_image, y0 = band % bands_per_image * kRowsPerBand;
      kernel(args, n, y0, std::min(y0 + kRowsPerBand, plan.H), scratch);
    }
  });
  return plan.outputs;
}

std::vector<at::Tensor> upsample_decode_cpu(at::TensorList logits, const at::Tensor& ancestors, at::IntArrayRef size,
                                            int64_t mode, bool align_corners,
                                            c10::optional<at::ArrayRef<double>> covered) {
  const DecodePlan plan = plan_decode(logits, ancestors, size, mode, align_corners, covered);
  if (plan.N == 0 || plan.H == 0 || plan.W == 0) return plan.outputs;
  return logits[0].scalar_type() == at::kDouble ? decode_with<double>(plan, logits) : decode_with<float>(plan, logits);
}

}  // namespace

TORCH_LIBRARY_IMPL(hierparse, CPU, m) {
  m.impl("upsample_decode", &upsample_decode_cpu);
}

}  // namespace hierparse
