// The fused op returns gradients as large as the logits, every training step, in the same sizes.
// glibc serves blocks above its mmap threshold (32 MiB at most) with fresh pages each time, so a
// step would page-fault its gradients in anew (about 10k faults for 40 MiB: longer than the
// kernel itself). Like PyTorch's CUDA caching allocator, this pool keeps freed blocks for reuse,
// up to kMaxCachedBytes; anything beyond is returned to the system.
#include "gradient_pool.h"

#include <c10/core/CPUAllocator.h>

#include <cstdlib>
#include <mutex>
#include <unordered_map>

namespace hierparse {
namespace {

constexpr size_t kAlignment = 64;
constexpr size_t kMaxCachedBytes = size_t(1) << 30;

class BlockPool {
 public:
  void* take(size_t nbytes) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = free_.find(nbytes);
      if (it != free_.end()) {
        void* block = it->second;
        free_.erase(it);
        cached_bytes_ -= nbytes;
        return block;
      }
    }
    void* block = nullptr;
    TORCH_CHECK(posix_memalign(&block, kAlignment, nbytes) == 0, "hierparse: out of memory allocating ",
                nbytes, " bytes of gradients");
    return block;
  }

  void give_back(void* block, size_t nbytes) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (cached_bytes_ + nbytes <= kMaxCachedBytes) {
        free_.emplace(nbytes, block);
        cached_bytes_ += nbytes;
        return;
      }
    }
    std::free(block);
  }

 private:
  std::mutex mutex_;
  std::unordered_multimap<size_t, void*> free_;
  size_t cached_bytes_ = 0;
};

BlockPool& pool() {
  static BlockPool* instance = new BlockPool();  // never destroyed: blocks may outlive static teardown
  return *instance;
}

}  // namespace

at::Tensor pooled_empty_like(const at::Tensor& like) {
  // The layout at::empty_like would choose, computed without allocating.
  const at::Tensor layout = at::empty_like(like, like.options().device(at::kMeta));
  const size_t nbytes = std::max<size_t>(layout.storage().nbytes(), 1);
  void* block = pool().take(nbytes);
  return at::from_blob(
      block, layout.sizes(), layout.strides(), [nbytes](void* data) { pool().give_back(data, nbytes); },
      like.options());
}

}  // namespace hierparse
