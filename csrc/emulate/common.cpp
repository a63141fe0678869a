// The CPU emulation of csrc/cuda/common_kernels.cuh (tools/cuda_emulation.py builds it).
#include "cuda/common_kernels.cuh"
