// What the CUDA kernels' host code asks of the device, in one place, so that the same kernel source
// builds for a GPU (nvcc) and for the CPU emulation of csrc/emulate/cuda_emulation.h
// (HIERPARSE_EMULATE_CUDA, a host C++ build: tools/cuda_emulation.py).
//
//   launch_kernel      <<<blocks, threads, shared bytes, current stream>>> and the launch check
//   resident_blocks    how many blocks of a kernel the device holds at once (the grid of a
//                      grid-stride loop)
//   KernelDeviceGuard  the device guard (CUDAGuard)
//   on_kernel_device   whether a tensor is where the kernels read it (a CUDA device; the CPU when
//                      emulated)
//   HP_DYNAMIC_SHARED  the dynamic shared-memory array of a kernel
//   HP_REGISTER_CUDA_KERNELS(m)  TORCH_LIBRARY_IMPL(hierparse, CUDA, m); emulated, the same
//                      schemas in the library hierparse_emulated, under the CPU key
//   HP_LIBRARY         the name of that library ("hierparse" or "hierparse_emulated")
//   HP_DISPATCH_LOGIT_TYPES, HP_DISPATCH_LABEL_TYPES  the logits' and labels' dtypes the kernels are
//                      instantiated for: float32, float64, float16, bfloat16 and uint8, int8, int16,
//                      int32, int64; only float32, float64 and uint8, int64 in the sanitized
//                      emulations (HIERPARSE_EMULATION_FEW_TYPES: a fifth of the compile time; their
//                      tests use no other)
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <string>

#if defined(HIERPARSE_EMULATE_CUDA)
#include "emulate/cuda_emulation.h"
#else
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#endif

#if defined(HIERPARSE_EMULATION_FEW_TYPES)
#define HP_DISPATCH_LOGIT_TYPES(TYPE, NAME, ...) AT_DISPATCH_FLOATING_TYPES(TYPE, NAME, __VA_ARGS__)
#define HP_DISPATCH_LABEL_TYPES(TYPE, NAME, ...) \
  AT_DISPATCH_SWITCH(TYPE, NAME, AT_DISPATCH_CASE(at::kByte, __VA_ARGS__) AT_DISPATCH_CASE(at::kLong, __VA_ARGS__))
#else
#define HP_DISPATCH_LOGIT_TYPES(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)
#define HP_DISPATCH_LABEL_TYPES(TYPE, NAME, ...) AT_DISPATCH_INTEGRAL_TYPES(TYPE, NAME, __VA_ARGS__)
#endif

namespace hierparse {

#if defined(HIERPARSE_EMULATE_CUDA)

#define HP_DYNAMIC_SHARED(type, name) type* const name = ::hierparse::emulation::dynamic_shared<type>()
#define HP_REGISTER_CUDA_KERNELS(m) TORCH_LIBRARY_IMPL(hierparse_emulated, CPU, m)
#define HP_LIBRARY "hierparse_emulated"

struct KernelDeviceGuard {
  explicit KernelDeviceGuard(at::Device) {}
};

inline bool on_kernel_device(const at::Tensor& tensor) { return tensor.is_cpu(); }

template <typename Kernel>
int64_t resident_blocks(Kernel, int, size_t) {
  return emulation::resident_blocks();
}

template <typename... Params, typename... Args>
void launch_kernel(void (*kernel)(Params...), int64_t blocks, int threads, size_t shared_bytes, Args&&... args) {
  TORCH_CHECK(blocks >= 1 && blocks <= INT32_MAX, "CUDA emulation: a grid of ", blocks, " blocks");
  const std::string error = emulation::run_grid(kernel, static_cast<unsigned int>(blocks),
                                                static_cast<unsigned int>(threads), shared_bytes,
                                                static_cast<Params>(args)...);
  TORCH_CHECK(error.empty(), "CUDA emulation: ", error);
}

#else

#define HP_DYNAMIC_SHARED(type, name) extern __shared__ type name[]
#define HP_REGISTER_CUDA_KERNELS(m) TORCH_LIBRARY_IMPL(hierparse, CUDA, m)
#define HP_LIBRARY "hierparse"

using KernelDeviceGuard = c10::cuda::CUDAGuard;

inline bool on_kernel_device(const at::Tensor& tensor) { return tensor.is_cuda(); }

template <typename Kernel>
int64_t resident_blocks(Kernel kernel, int threads, size_t shared_bytes) {
  int blocks_per_sm = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks_per_sm, kernel, threads, shared_bytes));
  const cudaDeviceProp* props = at::cuda::getCurrentDeviceProperties();
  return static_cast<int64_t>(props->multiProcessorCount) * std::max(blocks_per_sm, 1);
}

template <typename... Params, typename... Args>
void launch_kernel(void (*kernel)(Params...), int64_t blocks, int threads, size_t shared_bytes, Args&&... args) {
  TORCH_CHECK(blocks >= 1 && blocks <= INT32_MAX, "hierparse: a CUDA grid of ", blocks, " blocks");
  kernel<<<static_cast<unsigned int>(blocks), threads, shared_bytes, at::cuda::getCurrentCUDAStream()>>>(
      static_cast<Params>(args)...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

#endif

}  // namespace hierparse
