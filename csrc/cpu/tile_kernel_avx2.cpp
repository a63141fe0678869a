// The tile, upsampling and decode kernels compiled for AVX2 + FMA (x86-64 with GCC; elsewhere this capability
// is absent).
#include "cpu/tile_kernel_isa_begin.h"

#if HP_X86_GCC
#pragma GCC push_options
#pragma GCC target("avx2,fma,bmi2")
#define HP_ISA avx2
#define HP_VECTOR_BYTES 32
#define HP_BLOCK_VECTORS 4
#include "cpu/tile_kernel_impl.h"
#include "cpu/upsample_kernel_impl.h"
#include "cpu/decode_kernel_impl.h"
#pragma GCC pop_options
#endif

namespace hierparse {
namespace cpu {
CpuCapability capability_avx2() { return HP_CAPABILITY("avx2", avx2); }
}  // namespace cpu
}  // namespace hierparse
