// The CUDA kernel's gather algorithm for levels smaller than the labels (upsampled_ce.h), run on the
// CPU when HIERPARSE_CPU_UPSAMPLING=gather: the tests compare it with F.interpolate + F.cross_entropy
// here, so the arithmetic the GPU runs is checked on machines without one. Slower than the CPU's own
// units of rows (upsample_kernel_impl.h), which stay the default.
#include "cpu/upsampled_ce_gather_cpu.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "upsampled_ce_host.h"

namespace hierparse {

bool cpu_upsampling_is_gather() {
  const char* mode = std::getenv("HIERPARSE_CPU_UPSAMPLING");
  if (mode == nullptr || *mode == '\0' || std::strcmp(mode, "units") == 0) return false;
  TORCH_CHECK_VALUE(std::strcmp(mode, "gather") == 0, "HIERPARSE_CPU_UPSAMPLING=", mode,
                    " is not an algorithm; use units (the default) or gather (the CUDA kernel's)");
  return true;
}

std::vector<double> gather_upsampled_levels(const Plan& plan, at::TensorList logits, const at::Tensor& labels,
                                            at::Tensor& losses, std::vector<at::Tensor>& grads,
                                            const at::Tensor& grad_weights, const std::vector<int64_t>& levels) {
  std::vector<double> totals;
  for (const int64_t l : levels) {
    const at::Tensor grad = grads.empty() ? at::Tensor() : grads[l];
    double total = 0;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits[l].scalar_type(), "hierparse_gather_cpu", [&] {
      using logit_t = scalar_t;
      using acc_t = std::conditional_t<std::is_same_v<logit_t, double>, double, float>;
      AT_DISPATCH_INTEGRAL_TYPES(labels.scalar_type(), "hierparse_gather_cpu_labels", [&] {
        const auto a =
            upsampled_level<logit_t, acc_t, scalar_t>(plan, l, logits[l], labels, grad, losses, grad_weights);
        // One partial sum per row of items, added in order afterwards: the same bits for any thread count.
        const int64_t rows = a.num_items() / a.w;
        std::vector<double> row_sums(rows, 0.0);
        at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
          for (int64_t r = begin; r < end; ++r)
            for (int64_t j = 0; j < a.w; ++j) row_sums[r] += upsampled_item(a, r * a.w + j);
        });
        for (const double s : row_sums) total += s;
      });
    });
    totals.push_back(total);
  }
  return totals;
}

}  // namespace hierparse
