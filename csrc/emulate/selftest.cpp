// Kernels that check the emulator itself (tests/test_cuda_emulation.py): a barrier that works,
// atomics, and kernels with the faults the emulation must expose (a divergent barrier, a deadlock,
// a race for ThreadSanitizer, overflows of dynamic and static shared memory for AddressSanitizer).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <string>

#include "cuda/backend.cuh"

namespace hierparse {
namespace {

constexpr int kThreads = 256;

// out[b] = sum of threadIdx.x over block b, by a tree in shared memory.
__global__ void block_sum_kernel(int64_t* out) {
  __shared__ int64_t partial[kThreads];
  partial[threadIdx.x] = threadIdx.x;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (static_cast<int>(threadIdx.x) < s) partial[threadIdx.x] += partial[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) out[blockIdx.x] = partial[0];
}

// out: [count, min, max] of the global thread ids.
__global__ void atomics_kernel(int64_t* out) {
  const long long id = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  atomicAdd(reinterpret_cast<unsigned long long*>(out), 1ull);
  atomicMin(reinterpret_cast<long long*>(out + 1), id);
  atomicMax(reinterpret_cast<long long*>(out + 2), id);
}

// Thread 0 returns before the barrier the others wait at.
__global__ void divergent_kernel(int64_t* out) {
  if (threadIdx.x == 0) return;
  __syncthreads();
  out[0] = 1;
}

// Thread 0 waits at a barrier; the others wait for a flag it sets after that barrier.
__global__ void deadlock_kernel(int64_t* out) {
  if (threadIdx.x == 0) {
    __syncthreads();
    std::atomic_ref<int64_t>(out[0]).store(1);
    return;
  }
  while (std::atomic_ref<int64_t>(out[0]).load() == 0) {
    if (emulation::launch_failed()) return;
  }
}

// Each thread reads its neighbour's shared slot with no barrier after the writes (a missing
// __syncthreads): a data race.
__global__ void race_kernel(int64_t* out) {
  __shared__ int64_t slots[kThreads];
  slots[threadIdx.x] = threadIdx.x;
  out[threadIdx.x] = slots[(threadIdx.x + 1) % kThreads];
}

// Writes one element past the launch's dynamic shared memory (one int64 per thread).
__global__ void overflow_kernel(int64_t* out) {
  HP_DYNAMIC_SHARED(int64_t, words);
  words[threadIdx.x + 1] = threadIdx.x;
  out[threadIdx.x] = 0;
}

// Writes one element past a __shared__ array.
__global__ void static_overflow_kernel(int64_t* out) {
  __shared__ int64_t slots[kThreads];
  slots[threadIdx.x + 1] = threadIdx.x;
  __syncthreads();
  out[threadIdx.x] = slots[threadIdx.x];
}

at::Tensor emulator_selftest(const std::string& kernel, int64_t blocks) {
  at::Tensor out = at::zeros({std::max<int64_t>(blocks, kThreads)}, at::kLong);
  int64_t* data = out.data_ptr<int64_t>();
  if (kernel == "block_sum") {
    launch_kernel(block_sum_kernel, blocks, kThreads, 0, data);
  } else if (kernel == "atomics") {
    data[1] = INT64_MAX;
    data[2] = INT64_MIN;
    launch_kernel(atomics_kernel, blocks, kThreads, 0, data);
  } else if (kernel == "divergent") {
    launch_kernel(divergent_kernel, blocks, kThreads, 0, data);
  } else if (kernel == "deadlock") {
    launch_kernel(deadlock_kernel, blocks, kThreads, 0, data);
  } else if (kernel == "race") {
    launch_kernel(race_kernel, blocks, kThreads, 0, data);
  } else if (kernel == "overflow") {
    launch_kernel(overflow_kernel, blocks, kThreads, kThreads * sizeof(int64_t), data);
  } else if (kernel == "static_overflow") {
    launch_kernel(static_overflow_kernel, blocks, kThreads, 0, data);
  } else {
    TORCH_CHECK_VALUE(false, "emulator_selftest: no kernel ", kernel);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(hierparse_emulated, m) {
  m.def("emulator_selftest(str kernel, int blocks) -> Tensor");
  m.impl("emulator_selftest", c10::DispatchKey::CompositeExplicitAutograd, &emulator_selftest);
}

}  // namespace hierparse
