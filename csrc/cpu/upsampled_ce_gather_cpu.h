// The CUDA kernel's gather algorithm for upsampled levels, run on the CPU (upsampled_ce_gather_cpu.cpp).
#pragma once

#include <ATen/ATen.h>

#include <vector>

#include "multilevel_ce_host.h"

namespace hierparse {

// Whether HIERPARSE_CPU_UPSAMPLING asks for the gather algorithm ("gather") instead of the default
// units of rows ("units", or unset); raises on any other value.
bool cpu_upsampling_is_gather();

// Runs the gather algorithm for each level in `levels` (all smaller than the labels): writes their
// gradients (when grads is not empty) and per-pixel losses (reduction "none"), and returns each
// level's unscaled loss sum, in the order of `levels`.
std::vector<double> gather_upsampled_levels(const Plan& plan, at::TensorList logits, const at::Tensor& labels,
                                            at::Tensor& losses, std::vector<at::Tensor>& grads,
                                            const at::Tensor& grad_weights, const std::vector<int64_t>& levels);

}  // namespace hierparse
