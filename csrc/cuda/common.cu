// The GPU build of common_kernels.cuh (the CPU emulation builds the same header: csrc/emulate/common.cpp).
#include "common_kernels.cuh"
