// The tile, upsampling and decode kernels for any x86-64 (SSE2) or other CPU: the compiler's baseline
// instruction set.
#define HP_ISA baseline
#define HP_VECTOR_BYTES 16
#define HP_BLOCK_VECTORS 4
#include "cpu/tile_kernel_impl.h"
#include "cpu/upsample_kernel_impl.h"
#include "cpu/decode_kernel_impl.h"

namespace hierparse {
namespace cpu {
CpuCapability capability_default() {
  return {"default", &baseline::run_tile, &baseline::fence, &baseline::run_unit, &baseline::join_unit,
          &baseline::run_decode};
}
}  // namespace cpu
}  // namespace hierparse
