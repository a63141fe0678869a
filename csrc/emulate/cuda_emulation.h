// Runs CUDA kernel source on the CPU, so that the kernels of csrc/cuda are executed (and checked with
// ThreadSanitizer and AddressSanitizer) on machines without a GPU. Included by csrc/cuda/backend.cuh
// when HIERPARSE_EMULATE_CUDA is defined; tools/cuda_emulation.py builds the emulated library.
//
// What is modelled, and nothing else (tools/cuda_emulation.py fails the build when a kernel source
// names another CUDA intrinsic):
//   - threadIdx, blockIdx, blockDim, gridDim (x only is ever used; y and z are 1);
//   - a grid: its blocks run one after another, the threads of a block run as concurrent host
//     threads (one std::thread each, kept for the next launch), so data races between them are real
//     races for TSan;
//   - __syncthreads: a barrier of the block's threads. A thread that returns from the kernel while
//     others wait at a barrier (a divergent barrier) fails the launch, and so does a barrier not
//     reached by every thread within HIERPARSE_EMULATION_TIMEOUT seconds (default 60): a deadlock;
//   - __shared__ arrays: static storage, one copy for the block that runs (launches are serialised);
//     not cleared between blocks, as on a GPU. Dynamic shared memory: a heap buffer of exactly the
//     launch's byte count, so that AddressSanitizer sees a read or write past its end;
//   - atomicAdd (unsigned int, unsigned long long), atomicMin and atomicMax (long long) through
//     std::atomic_ref;
//   - __global__, __device__, __host__, __forceinline__, __launch_bounds__, __grid_constant__ as
//     plain host C++; the device math functions are the host's (expf, log1pf, floorf...).
// The number of blocks resident on the emulated device is HIERPARSE_EMULATION_BLOCKS (default 3),
// small so that grid-stride loops go round more than once.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
#define __grid_constant__
#define __shared__ static

namespace hierparse::emulation {

struct Dim3 {
  unsigned int x = 1, y = 1, z = 1;
};

// Thrown inside a thread of a failed launch, to unwind it out of the kernel.
struct LaunchAborted {};

// The threads of the running block and their barrier.
class Block {
 public:
  Block(unsigned int threads, std::chrono::duration<double> timeout) : threads_(threads), timeout_(timeout) {}

  // __syncthreads (at_exit false) or the end of the kernel (at_exit true): waits until every thread
  // of the block has arrived.
  void arrive(bool at_exit, unsigned int block) {
    std::unique_lock<std::mutex> lock(mutex_);
    if (!error_.empty()) throw LaunchAborted{};
    const uint64_t generation = generation_;
    ++(at_exit ? exited_ : waiting_);
    if (waiting_ + exited_ == threads_) {
      if (waiting_ != 0 && exited_ != 0) {
        fail(lock, std::to_string(waiting_) + " threads of block " + std::to_string(block) +
                       " wait at __syncthreads while " + std::to_string(exited_) +
                       " have returned from the kernel (a divergent barrier)");
      }
      waiting_ = exited_ = 0;
      ++generation_;
      released_.notify_all();
      return;
    }
    if (!released_.wait_for(lock, timeout_, [&] { return generation_ != generation || !error_.empty(); })) {
      fail(lock, "deadlock: " + std::to_string(waiting_ + exited_) + " of " + std::to_string(threads_) +
                     " threads of block " + std::to_string(block) + " reached a barrier within " +
                     std::to_string(timeout_.count()) + " s");
    }
    if (!error_.empty()) throw LaunchAborted{};
  }

  bool failed() {
    std::lock_guard<std::mutex> lock(mutex_);
    return !error_.empty();
  }

  std::string error() {
    std::lock_guard<std::mutex> lock(mutex_);
    return error_;
  }

  void fail(const std::string& message) {
    std::unique_lock<std::mutex> lock(mutex_);
    fail(lock, message);
  }

 private:
  void fail(std::unique_lock<std::mutex>&, const std::string& message) {
    if (error_.empty()) error_ = message;
    released_.notify_all();
    throw LaunchAborted{};
  }

  const unsigned int threads_;
  const std::chrono::duration<double> timeout_;
  std::mutex mutex_;
  std::condition_variable released_;
  uint64_t generation_ = 0;
  unsigned int waiting_ = 0, exited_ = 0;
  std::string error_;
};

inline thread_local Block* current_block = nullptr;
inline thread_local unsigned char* current_dynamic_shared = nullptr;

inline double env_number(const char* name, double fallback) {
  const char* value = std::getenv(name);
  return value != nullptr && *value != '\0' ? std::atof(value) : fallback;
}

// Blocks resident on the emulated device at once (what cudaOccupancy... times the SM count gives
// on a GPU).
inline int64_t resident_blocks() {
  return std::max<int64_t>(1, static_cast<int64_t>(env_number("HIERPARSE_EMULATION_BLOCKS", 3)));
}

// True once the running launch has failed: lets a spinning test kernel give up.
inline bool launch_failed() { return current_block != nullptr && current_block->failed(); }

template <typename T>
T* dynamic_shared() {
  return reinterpret_cast<T*>(current_dynamic_shared);
}

}  // namespace hierparse::emulation

inline thread_local hierparse::emulation::Dim3 threadIdx, blockIdx, blockDim, gridDim;

inline void __syncthreads() { hierparse::emulation::current_block->arrive(false, blockIdx.x); }

inline unsigned int atomicAdd(unsigned int* address, unsigned int value) {
  return std::atomic_ref<unsigned int>(*address).fetch_add(value, std::memory_order_relaxed);
}

inline unsigned long long atomicAdd(unsigned long long* address, unsigned long long value) {
  return std::atomic_ref<unsigned long long>(*address).fetch_add(value, std::memory_order_relaxed);
}

inline long long atomicMin(long long* address, long long value) {
  std::atomic_ref<long long> target(*address);
  long long old = target.load(std::memory_order_relaxed);
  while (value < old && !target.compare_exchange_weak(old, value, std::memory_order_relaxed)) {
  }
  return old;
}

inline long long atomicMax(long long* address, long long value) {
  std::atomic_ref<long long> target(*address);
  long long old = target.load(std::memory_order_relaxed);
  while (value > old && !target.compare_exchange_weak(old, value, std::memory_order_relaxed)) {
  }
  return old;
}

namespace hierparse::emulation {

// Worker threads kept from one launch to the next (creating 256 threads a launch is most of the time
// of a launch under ThreadSanitizer). run(threads, task) calls task(t) for t = 0..threads-1 on as
// many concurrent workers and returns when all have returned. The pool is never destroyed: its idle
// workers wait until the process exits.
class WorkerPool {
 public:
  void run(unsigned int threads, const std::function<void(unsigned int)>& task) {
    std::unique_lock<std::mutex> lock(mutex_);
    while (workers_.size() < threads) {
      const auto index = static_cast<unsigned int>(workers_.size());
      workers_.emplace_back([this, index] { work(index); });
    }
    task_ = &task;
    active_ = pending_ = threads;
    ++generation_;
    wake_.notify_all();
    done_.wait(lock, [&] { return pending_ == 0; });
    task_ = nullptr;
  }

 private:
  void work(unsigned int index) {
    uint64_t seen = 0;
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      wake_.wait(lock, [&] { return generation_ != seen; });
      seen = generation_;
      if (index >= active_) continue;  // a launch of fewer threads
      const std::function<void(unsigned int)>& task = *task_;
      lock.unlock();
      task(index);
      lock.lock();
      if (--pending_ == 0) done_.notify_one();
    }
  }

  std::mutex mutex_;
  std::condition_variable wake_, done_;
  std::vector<std::thread> workers_;
  const std::function<void(unsigned int)>* task_ = nullptr;
  unsigned int active_ = 0, pending_ = 0;
  uint64_t generation_ = 0;
};

inline WorkerPool& worker_pool() {
  static WorkerPool* pool = new WorkerPool();
  return *pool;
}

// Serialises launches: a kernel's __shared__ arrays are one static copy.
inline std::mutex& launch_mutex() {
  static std::mutex mutex;
  return mutex;
}

// Runs kernel(args...) over `blocks` blocks of `threads` threads with `shared_bytes` of dynamic
// shared memory; returns the first failure ("" when none).
template <typename Kernel, typename... Args>
std::string run_grid(Kernel kernel, unsigned int blocks, unsigned int threads, size_t shared_bytes,
                     const Args&... args) {
  std::lock_guard<std::mutex> serial(launch_mutex());
  std::vector<unsigned char> dynamic_shared(shared_bytes);  // exactly the launch's bytes, for ASan
  Block block(threads, std::chrono::duration<double>(env_number("HIERPARSE_EMULATION_TIMEOUT", 60)));
  worker_pool().run(threads, [&](unsigned int t) {
    threadIdx = Dim3{t, 0, 0};
    blockDim = Dim3{threads, 1, 1};
    gridDim = Dim3{blocks, 1, 1};
    current_block = &block;
    current_dynamic_shared = shared_bytes > 0 ? dynamic_shared.data() : nullptr;
    try {
      for (unsigned int b = 0; b < blocks; ++b) {
        blockIdx = Dim3{b, 0, 0};
        kernel(args...);
        block.arrive(true, b);  // the block ends when all its threads have returned
      }
    } catch (const LaunchAborted&) {
    } catch (const std::exception& error) {
      try {
        block.fail(std::string("a kernel thread threw: ") + error.what());
      } catch (const LaunchAborted&) {
      }
    }
    current_block = nullptr;
  });
  return block.error();
}

}  // namespace hierparse::emulation
