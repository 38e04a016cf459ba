// The pool behind PooledAllocations: a c10 CPU allocator that serves pooled requests from
// freed blocks of (nearly) the same size and passes every other request to the allocator it
// replaced. It is installed the first time a guard is made, and never removed: tensors it
// handed out may outlive any guard.
#include "buffer_pool.h"

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <unordered_map>

namespace unet_fast {
namespace {

constexpr size_t kMinPooledBytes = size_t(1) << 20;
constexpr size_t kGranularity = size_t(64) << 10;  // pooled sizes are rounded up to this

thread_local bool pooling = false;

size_t rounded(size_t n) { return (n + kGranularity - 1) / kGranularity * kGranularity; }

class PoolingAllocator final : public c10::Allocator {
 public:
  explicit PoolingAllocator(c10::Allocator* fallback) : fallback_(fallback) {}

  c10::DataPtr allocate(size_t n) override {
    if (!pooling || n < kMinPooledBytes) return fallback_->allocate(n);
    auto [ptr, size] = take_cached(rounded(n));
    if (ptr == nullptr) ptr = c10::alloc_cpu(size);
    std::lock_guard<std::mutex> lock(mutex_);
    in_use_.emplace(ptr, size);
    in_use_bytes_ += size;
    peak_in_use_bytes_ = std::max(peak_in_use_bytes_, in_use_bytes_);
    report(ptr, int64_t(size));
    return {ptr, ptr, &release, c10::Device(c10::DeviceType::CPU)};
  }

  c10::DeleterFnPtr raw_deleter() const override { return &release; }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  BufferPoolStats stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    return {int64_t(in_use_bytes_), int64_t(cached_bytes_)};
  }

  void empty_cache() {
    std::lock_guard<std::mutex> lock(mutex_);
    for (const auto& [size, ptr] : cached_) c10::free_cpu(ptr);
    cached_.clear();
    cached_bytes_ = 0;
  }

  static PoolingAllocator* instance;

 private:
  // The smallest cached block that fits with at most a quarter to spare and its size, or
  // null and the size to allocate.
  std::pair<void*, size_t> take_cached(size_t size) {
    std::lock_guard<std::mutex> lock(mutex_);
    const auto it = cached_.lower_bound(size);
    if (it == cached_.end() || it->first > size + size / 4) return {nullptr, size};
    const auto block = *it;
    cached_bytes_ -= block.first;
    cached_.erase(it);
    return {block.second, block.first};
  }

  // Deleter of every pointer this allocator returned, pooled or not: the fallback's own
  // deleters stay attached to what it allocated, so only raw_deallocate lands here unpooled.
  static void release(void* ptr) {
    PoolingAllocator* self = instance;
    {
      std::lock_guard<std::mutex> lock(self->mutex_);
      const auto it = self->in_use_.find(ptr);
      if (it != self->in_use_.end()) {
        const size_t size = it->second;
        self->in_use_.erase(it);
        self->in_use_bytes_ -= size;
        self->report(ptr, -int64_t(size));
        // Idle memory is bounded by twice the most the pool ever had in use: a training step
        // frees and asks for many sizes, and a tighter bound evicts blocks the next step reuses.
        if (self->cached_bytes_ + size > 2 * self->peak_in_use_bytes_) {
          c10::free_cpu(ptr);
          return;
        }
        self->cached_.emplace(size, ptr);
        self->cached_bytes_ += size;
        return;
      }
    }
    self->fallback_->raw_deleter()(ptr);
  }

  void report(void* ptr, int64_t delta) const {
    if (c10::memoryProfilingEnabled()) {
      c10::reportMemoryUsageToProfiler(ptr, delta, in_use_bytes_, in_use_bytes_ + cached_bytes_,
                                       c10::Device(c10::DeviceType::CPU));
    }
  }

  c10::Allocator* fallback_;
  std::mutex mutex_;
  std::unordered_map<void*, size_t> in_use_;
  std::multimap<size_t, void*> cached_;
  size_t in_use_bytes_ = 0, cached_bytes_ = 0, peak_in_use_bytes_ = 0;
};

PoolingAllocator* PoolingAllocator::instance = nullptr;

PoolingAllocator& pool() {
  static std::once_flag installed;
  std::call_once(installed, [] {
    // Leaked on purpose: pooled tensors can be freed during interpreter shutdown.
    PoolingAllocator::instance = new PoolingAllocator(c10::GetCPUAllocator());
    c10::SetCPUAllocator(PoolingAllocator::instance, /*priority=*/1);
  });
  return *PoolingAllocator::instance;
}

// UNET_FAST_CPU_POOL=0 turns the pool off (read once).
bool pool_enabled() {
  static const bool enabled = [] {
    const char* value = std::getenv("UNET_FAST_CPU_POOL");
    return value == nullptr || std::string(value) != "0";
  }();
  return enabled;
}

}  // namespace

PooledAllocations::PooledAllocations() : outer_(!pooling) {
  if (!pool_enabled()) {
    outer_ = false;
    return;
  }
  pool();
  pooling = true;
}

PooledAllocations::~PooledAllocations() {
  if (outer_) pooling = false;
}

BufferPoolStats buffer_pool_stats() { return pool().stats(); }

void buffer_pool_empty_cache() { pool().empty_cache(); }

}  // namespace unet_fast
