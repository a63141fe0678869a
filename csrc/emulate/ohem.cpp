// The CPU emulation of csrc/cuda/ohem_kernels.cuh (tools/cuda_emulation.py builds it).
#include "cuda/ohem_kernels.cuh"
