// CPU gradient buffers that are reused across training steps instead of page-faulted in anew.
#pragma once

#include <ATen/ATen.h>

namespace hierparse {

// An uninitialised tensor shaped and strided like `like` (as at::empty_like), whose memory comes
// from a pool of blocks freed by earlier results of the same size.
at::Tensor pooled_empty_like(const at::Tensor& like);

}  // namespace hierparse
