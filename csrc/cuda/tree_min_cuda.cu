// The GPU build of tree_min_kernels.cuh (the CPU emulation builds the same header: csrc/emulate/tree_min.cpp).
#include "tree_min_kernels.cuh"
