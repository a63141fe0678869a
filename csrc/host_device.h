// HP_HOST_DEVICE marks the per-pixel functions that the CPU and CUDA kernels share (multilevel_ce.h,
// tree_min.h): host and device functions under nvcc, always-inlined host functions otherwise.
#pragma once

#if defined(__CUDACC__)
#define HP_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define HP_HOST_DEVICE inline __attribute__((always_inline))
#endif

// Unrolls the next loop under nvcc (so that arrays indexed by its counter stay in registers).
#if defined(__CUDACC__)
#define HP_UNROLL _Pragma("unroll")
#else
#define HP_UNROLL
#endif
