// The CPU emulation of csrc/cuda/tree_min_kernels.cuh (tools/cuda_emulation.py builds it).
#include "cuda/tree_min_kernels.cuh"
