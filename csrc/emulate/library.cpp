// The library hierparse_emulated: hierparse's operator schemas, whose CPU kernels are the CUDA
// kernels of csrc/cuda run by the emulation of cuda_emulation.h (common.cpp, multilevel_ce.cpp,
// tree_min.cpp, upsample_decode.cpp register them).
#include <torch/library.h>

#include "op_schemas.h"

TORCH_LIBRARY(hierparse_emulated, m) { hierparse::define_ops(m); }
