// The tile, upsampling and decode kernels compiled for AVX-512 F/BW/DQ/VL (x86-64 with GCC; elsewhere this
// capability is absent).
#include "cpu/tile_kernel_isa_begin.h"

#if HP_X86_GCC
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,bmi2")
#define HP_ISA avx512
#define HP_VECTOR_BYTES 64
#define HP_BLOCK_VECTORS 2
#include "cpu/tile_kernel_impl.h"
#include "cpu/upsample_kernel_impl.h"
#include "cpu/decode_kernel_impl.h"
#pragma GCC pop_options
#endif

namespace hierparse {
namespace cpu {
CpuCapability capability_avx512() { return HP_CAPABILITY("avx512", avx512); }
}  // namespace cpu
}  // namespace hierparse
