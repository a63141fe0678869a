// The tile kernel compiled for AVX-512 (F, BW, DQ, VL) (x86-64 with GCC; elsewhere this capability is absent).
#include "cpu/tile_kernel.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <cmath>
#include <cstdint>
#include <cstring>
#include <immintrin.h>
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,bmi2")
#define HP_ISA avx512
#define HP_VECTOR_BYTES 64
#define HP_BLOCK_VECTORS 2
#include "cpu/tile_kernel_impl.h"

namespace hierparse {
namespace cpu {
CpuCapability capability_avx512() { return {"avx512", &avx512::run_tile, &avx512::fence}; }
}  // namespace cpu
}  // namespace hierparse
#else
namespace hierparse {
namespace cpu {
CpuCapability capability_avx512() { return {"avx512", nullptr, nullptr}; }
}  // namespace cpu
}  // namespace hierparse
#endif
