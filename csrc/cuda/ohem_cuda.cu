// The GPU build of ohem_kernels.cuh (the CPU emulation builds the same header: csrc/emulate/ohem.cpp).
#include "ohem_kernels.cuh"
