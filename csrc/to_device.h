// A small host tensor (a table the planning built) on the kernels' device, shared by the ops' host code.
#pragma once

#include <ATen/ATen.h>

namespace hierparse {

// Itself on the CPU; on a GPU, a copy from pinned memory that the host does not wait for (the caching
// host allocator keeps the pinned buffer until the copy on the current stream is done).
inline at::Tensor to_device(const at::Tensor& host, at::Device device) {
  if (device.is_cpu()) return host;
  return host.pin_memory().to(device, /*non_blocking=*/true);
}

// t itself when it is on `device`, else (t on the CPU) a copy that the host does not wait for.
inline at::Tensor on_device(const at::Tensor& t, at::Device device) {
  return t.device() == device ? t : to_device(t.contiguous(), device);
}

}  // namespace hierparse
