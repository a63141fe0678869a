// The CPU emulation of csrc/cuda/multilevel_ce_kernels.cuh (tools/cuda_emulation.py builds it).
#include "cuda/multilevel_ce_kernels.cuh"
