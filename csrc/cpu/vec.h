// CPU vectors for the tile kernel: GCC vector extensions of HP_VECTOR_BYTES (one register of the
// instruction set that the including translation unit targets: 64 for AVX-512, 32 for AVX2, 16 for
// SSE2), so one source serves every instruction set. Part of tile_kernel_impl.h, in the namespace
// HP_ISA of the including translation unit. One lane holds one pixel. Loads and stores convert between the logits' storage type and the
// compute type (float, or double for float64 logits); half and bfloat16 are handled as raw bits
// here, with the same rounding as c10, so that this header needs nothing from ATen.
#pragma once

#ifndef HP_VECTOR_BYTES
#error "define HP_ISA and HP_VECTOR_BYTES before including cpu/vec.h"
#endif

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "multilevel_ce.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace hierparse {
namespace cpu {
namespace HP_ISA {

typedef float VecFloat __attribute__((vector_size(HP_VECTOR_BYTES)));
typedef uint32_t VecBits __attribute__((vector_size(HP_VECTOR_BYTES)));
typedef int32_t VecInt __attribute__((vector_size(HP_VECTOR_BYTES)));
typedef double VecDouble __attribute__((vector_size(HP_VECTOR_BYTES)));
typedef int64_t VecLong __attribute__((vector_size(HP_VECTOR_BYTES)));

// Storage types of half-precision logits, as bits.
struct Half {
  uint16_t bits;
};
struct BFloat16 {
  uint16_t bits;
};

// Per compute vector: its scalar type, lane count and the integer vector that masks it.
template <typename V>
struct VecTraits;
template <>
struct VecTraits<VecFloat> {
  using scalar = float;
  using mask = VecInt;
  static constexpr int lanes = HP_VECTOR_BYTES / 4;
};
template <>
struct VecTraits<VecDouble> {
  using scalar = double;
  using mask = VecLong;
  static constexpr int lanes = HP_VECTOR_BYTES / 8;
};

}  // namespace HP_ISA
}  // namespace cpu

template <>
struct BitsOf<cpu::HP_ISA::VecFloat> {
  using type = cpu::HP_ISA::VecBits;
};

namespace cpu {
namespace HP_ISA {

#define HP_INLINE inline __attribute__((always_inline))

// Float64 lanes use the C library's exp and log, one lane at a time (a path for tests, not speed).
HP_INLINE VecDouble exp_nonpositive(VecDouble x) {
  for (int j = 0; j < VecTraits<VecDouble>::lanes; ++j) x[j] = hierparse::exp_nonpositive(x[j]);
  return x;
}
HP_INLINE VecDouble log_positive(VecDouble x) {
  for (int j = 0; j < VecTraits<VecDouble>::lanes; ++j) x[j] = hierparse::log_positive(x[j]);
  return x;
}
HP_INLINE VecFloat exp_nonpositive(VecFloat x) { return hierparse::exp_nonpositive(x); }
HP_INLINE VecFloat log_positive(VecFloat x) { return hierparse::log_positive(x); }

// Storage <-> compute conversions of one value (c10's algorithms: round to nearest even).
HP_INLINE float to_compute(float x) { return x; }
HP_INLINE double to_compute(double x) { return x; }
HP_INLINE float to_compute(BFloat16 x) { return bit_cast<float>(static_cast<uint32_t>(x.bits) << 16); }
HP_INLINE float to_compute(Half x) {
  const uint32_t w = static_cast<uint32_t>(x.bits) << 16;
  const uint32_t sign = w & 0x80000000u;
  const uint32_t two_w = w + w;
  const float normalized = bit_cast<float>((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
  const float denormalized = bit_cast<float>((two_w >> 17) | (126u << 23)) - 0.5f;
  return bit_cast<float>(sign | (two_w < (1u << 27) ? bit_cast<uint32_t>(denormalized)
                                                    : bit_cast<uint32_t>(normalized)));
}

template <typename scalar_t>
HP_INLINE scalar_t from_compute(float x);
template <>
HP_INLINE float from_compute<float>(float x) { return x; }
template <>
HP_INLINE BFloat16 from_compute<BFloat16>(float x) {
  const uint32_t u = bit_cast<uint32_t>(x);
  const uint32_t rounded = (u + (((u >> 16) & 1u) + 0x7FFFu)) >> 16;
  return BFloat16{static_cast<uint16_t>(x != x ? 0x7FC0u : rounded)};
}
template <>
HP_INLINE Half from_compute<Half>(float x) {
  float base = (__builtin_fabsf(x) * 0x1.0p+112f) * 0x1.0p-110f;
  const uint32_t w = bit_cast<uint32_t>(x);
  const uint32_t shl1_w = w + w;
  const uint32_t sign = w & 0x80000000u;
  uint32_t bias = shl1_w & 0xFF000000u;
  bias = bias < 0x71000000u ? 0x71000000u : bias;
  base = bit_cast<float>((bias >> 1) + 0x07800000u) + base;
  const uint32_t bits = bit_cast<uint32_t>(base);
  const uint32_t nonsign = ((bits >> 13) & 0x00007C00u) + (bits & 0x00000FFFu);
  return Half{static_cast<uint16_t>((sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : nonsign))};
}

// A partial vector of contiguous floats (the end of a row) loaded or stored with a lane mask, where
// the instruction set has one: no lane-by-lane loop, no access past the count.
#if defined(__x86_64__) && HP_VECTOR_BYTES == 64
constexpr bool kMaskedFloatAccess = true;
HP_INLINE VecFloat masked_load(const float* src, int count) {
  return _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << count) - 1u), src);
}
HP_INLINE void masked_store(float* dst, int count, VecFloat v) {
  _mm512_mask_storeu_ps(dst, static_cast<__mmask16>((1u << count) - 1u), v);
}
#elif defined(__x86_64__) && HP_VECTOR_BYTES == 32
constexpr bool kMaskedFloatAccess = true;
HP_INLINE __m256i lanes_below(int count) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(count), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
HP_INLINE VecFloat masked_load(const float* src, int count) { return _mm256_maskload_ps(src, lanes_below(count)); }
HP_INLINE void masked_store(float* dst, int count, VecFloat v) { _mm256_maskstore_ps(dst, lanes_below(count), v); }
#else
constexpr bool kMaskedFloatAccess = false;
HP_INLINE VecFloat masked_load(const float*, int) { return VecFloat{}; }
HP_INLINE void masked_store(float*, int, VecFloat) {}
#endif

// Loads `count` (<= lanes) values at `stride` elements apart; missing lanes are 0.
template <typename V, typename scalar_t>
HP_INLINE V load(const scalar_t* src, int64_t stride, int count) {
  constexpr int kLanes = VecTraits<V>::lanes;
  V v;
  if (stride == 1 && count == kLanes) {
    for (int j = 0; j < kLanes; ++j) v[j] = to_compute(src[j]);
    return v;
  }
  if constexpr (kMaskedFloatAccess && std::is_same_v<scalar_t, float> && std::is_same_v<V, VecFloat>) {
    if (stride == 1) return masked_load(src, count);
  }
  for (int j = 0; j < kLanes; ++j) v[j] = j < count ? to_compute(src[j * stride]) : 0;
  return v;
}

template <typename scalar_t, typename S>
HP_INLINE scalar_t store_value(S x) {
  if constexpr (sizeof(S) == sizeof(double)) {
    return x;
  } else {
    return from_compute<scalar_t>(x);
  }
}

// Streaming (non-temporal) stores bypass the caches and skip reading each line before it is
// overwritten; they go one register at a time. (Keyed on HP_VECTOR_BYTES: `#pragma GCC target`
// enables the instructions but does not define __AVX512F__ and friends.)
#if defined(__x86_64__) && HP_VECTOR_BYTES == 64
constexpr int kStreamBytes = 64;
HP_INLINE void stream_unit(char* dst, const char* src) {
  _mm512_stream_si512(reinterpret_cast<__m512i*>(dst), _mm512_loadu_si512(src));
}
#elif defined(__x86_64__) && HP_VECTOR_BYTES == 32
constexpr int kStreamBytes = 32;
HP_INLINE void stream_unit(char* dst, const char* src) {
  _mm256_stream_si256(reinterpret_cast<__m256i*>(dst), _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src)));
}
#elif defined(__x86_64__)
constexpr int kStreamBytes = 16;
HP_INLINE void stream_unit(char* dst, const char* src) {
  _mm_stream_si128(reinterpret_cast<__m128i*>(dst), _mm_loadu_si128(reinterpret_cast<const __m128i*>(src)));
}
#else
constexpr int kStreamBytes = 0;  // no streaming stores: plain stores
HP_INLINE void stream_unit(char*, const char*) {}
#endif

// Orders the streaming stores of this thread before whatever it does next.
HP_INLINE void stream_fence() {
#if defined(__x86_64__)
  _mm_sfence();
#endif
}

// Stores the first `count` lanes of the B vectors `v` (pixel i in lane i % lanes of v[i / lanes])
// at `stride` elements apart, converting to the storage type. A full, contiguous block aligned to
// the streaming unit is streamed when `streaming` is set.
template <int B, typename scalar_t, typename V>
HP_INLINE void store(scalar_t* dst, int64_t stride, int count, const V* v, bool streaming) {
  constexpr int kLanes = VecTraits<V>::lanes;
  if (stride == 1 && count == B * kLanes) {
    scalar_t out[B * kLanes] __attribute__((aligned(64)));
    for (int b = 0; b < B; ++b)
      for (int j = 0; j < kLanes; ++j) out[b * kLanes + j] = store_value<scalar_t>(v[b][j]);
    constexpr int kBytes = static_cast<int>(sizeof(out));
    if (kStreamBytes > 0 && streaming && kBytes % kStreamBytes == 0 &&
        reinterpret_cast<uintptr_t>(dst) % kStreamBytes == 0) {
      for (int i = 0; i < kBytes; i += kStreamBytes)
        stream_unit(reinterpret_cast<char*>(dst) + i, reinterpret_cast<const char*>(out) + i);
    } else {
      std::memcpy(dst, out, sizeof(out));
    }
    return;
  }
  if constexpr (kMaskedFloatAccess && std::is_same_v<scalar_t, float> && std::is_same_v<V, VecFloat>) {
    if (stride == 1) {
      for (int b = 0; b < B && b * kLanes < count; ++b)
        masked_store(dst + b * kLanes, count - b * kLanes < kLanes ? count - b * kLanes : kLanes, v[b]);
      return;
    }
  }
  for (int i = 0; i < count; ++i) dst[i * stride] = store_value<scalar_t>(v[i / kLanes][i % kLanes]);
}

}  // namespace HP_ISA
}  // namespace cpu
}  // namespace hierparse
