// The GPU build of multilevel_ce_kernels.cuh (the CPU emulation builds the same header: csrc/emulate/multilevel_ce.cpp).
#include "multilevel_ce_kernels.cuh"
