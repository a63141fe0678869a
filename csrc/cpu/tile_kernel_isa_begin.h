// First include of the per-instruction-set translation units (tile_kernel_avx2.cpp,
// tile_kernel_avx512.cpp). Every header outside the kernel is included here, before the unit's
// `#pragma GCC push_options` / `target(...)`, so that only the kernel itself is compiled for the
// wider instruction set; the capability function after `pop_options` is baseline code, safe to
// call on any CPU before its features are checked.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "cpu/decode_kernel.h"
#include "cpu/tile_kernel.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>
#define HP_X86_GCC 1
// The kernel of namespace `isa`, or none where this build cannot compile it.
#define HP_CAPABILITY(name, isa) \
  CpuCapability { name, &isa::run_tile, &isa::fence, &isa::run_unit, &isa::join_unit, &isa::run_decode }
#else
#define HP_X86_GCC 0
#define HP_CAPABILITY(name, isa) \
  CpuCapability { name, nullptr, nullptr, nullptr, nullptr, nullptr }
#endif
