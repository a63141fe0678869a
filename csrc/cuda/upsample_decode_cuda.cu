// The GPU build of upsample_decode_kernels.cuh (the CPU emulation builds the same header: csrc/emulate/upsample_decode.cpp).
#include "upsample_decode_kernels.cuh"
