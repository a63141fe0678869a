// The CPU emulation of csrc/cuda/upsample_decode_kernels.cuh (tools/cuda_emulation.py builds it).
#include "cuda/upsample_decode_kernels.cuh"
