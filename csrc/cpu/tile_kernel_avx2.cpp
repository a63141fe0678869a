// The tile kernel compiled for AVX2 + FMA (x86-64 with GCC; elsewhere this capability is absent).
#include "cpu/tile_kernel.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <cmath>
#include <cstdint>
#include <cstring>
#include <immintrin.h>
#pragma GCC target("avx2,fma,bmi2")
#define HP_ISA avx2
#define HP_VECTOR_BYTES 32
#define HP_BLOCK_VECTORS 4
#include "cpu/tile_kernel_impl.h"

namespace hierparse {
namespace cpu {
CpuCapability capability_avx2() { return {"avx2", &avx2::run_tile, &avx2::fence}; }
}  // namespace cpu
}  // namespace hierparse
#else
namespace hierparse {
namespace cpu {
CpuCapability capability_avx2() { return {"avx2", nullptr, nullptr}; }
}  // namespace cpu
}  // namespace hierparse
#endif
