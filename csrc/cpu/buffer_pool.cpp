// The pool behind PooledAllocations: a c10 CPU allocator that serves pooled requests from
// freed blocks of (nearly) the same size and passes every other request, untouched, to the
// allocator it wraps. It is put in front of torch's CPU allocator the first time a guard is
// made, and never removed: tensors it handed out may outlive any guard.
//
// Bounds: the blocks it holds, in use and idle, never add up to more than the most it ever had
// in use at once (one step's need), the least recently freed going first; and a trimming
// thread gives back every block that has been idle for the idle time (and glibc's free heap,
// malloc_trim): all of them once the ops stop, and those a running loop no longer uses. Across fork() the child gets a pool that
// works (pthread_atfork: no lock held, its own trimming thread started when it is next used).
#include "buffer_pool.h"

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/util/Exception.h>
#include <malloc.h>
#include <pthread.h>
#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <list>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>

namespace unet_fast {
namespace {

constexpr size_t kMinPooledBytes = size_t(1) << 20;
constexpr size_t kGranularity = size_t(64) << 10;  // pooled sizes are rounded up to this
constexpr size_t kHugePage = size_t(2) << 20;
// Longer than a slow step of a large network, so that a training loop, or a benchmark alternating
// with another model, keeps its blocks; short enough to give them back soon after the work stops.
constexpr double kDefaultIdleSeconds = 30.0;

thread_local bool pooling = false;

size_t rounded(size_t n) { return (n + kGranularity - 1) / kGranularity * kGranularity; }

using Clock = std::chrono::steady_clock;

// A block of `size` bytes mapped straight from the OS, so that freeing it gives it back (glibc
// would keep freed blocks below its mmap threshold, up to 32 MiB, in its heap). Blocks of 2 MiB
// and more are aligned to 2 MiB and asked to use transparent huge pages: a first touch then
// faults once per 2 MiB instead of once per 4 KiB.
void* map_block(size_t size) {
  const size_t extra = size >= kHugePage ? kHugePage : 0;
  void* mapped = mmap(nullptr, size + extra, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  TORCH_CHECK(mapped != MAP_FAILED, "unet_fast's CPU buffer pool could not map ", size, " bytes: out of memory");
  if (extra == 0) return mapped;
  const auto begin = reinterpret_cast<uintptr_t>(mapped);
  const uintptr_t aligned = (begin + kHugePage - 1) & ~(kHugePage - 1);
  if (aligned > begin) munmap(mapped, aligned - begin);
  if (const size_t tail = begin + size + extra - (aligned + size)) munmap(reinterpret_cast<void*>(aligned + size), tail);
  madvise(reinterpret_cast<void*>(aligned), size, MADV_HUGEPAGE);
  return reinterpret_cast<void*>(aligned);
}

void unmap_block(void* ptr, size_t size) { munmap(ptr, size); }

// UNET_FAST_CPU_POOL_IDLE_S: seconds without pooled activity after which idle blocks go back.
double idle_seconds_from_environment() {
  const char* value = std::getenv("UNET_FAST_CPU_POOL_IDLE_S");
  if (value == nullptr || *value == '\0') return kDefaultIdleSeconds;
  char* end = nullptr;
  const double seconds = std::strtod(value, &end);
  TORCH_CHECK(end != value && *end == '\0' && seconds >= 0,
              "UNET_FAST_CPU_POOL_IDLE_S must be a number of seconds >= 0, got '", value, "'");
  return seconds;
}

class PoolingAllocator final : public c10::Allocator {
 public:
  explicit PoolingAllocator(c10::Allocator* fallback)
      : fallback_(fallback), idle_seconds_(idle_seconds_from_environment()) {}

  c10::DataPtr allocate(size_t n) override {
    if (!pooling || n < kMinPooledBytes) return fallback_->allocate(n);
    const size_t wanted = rounded(n);
    std::unique_lock<std::mutex> lock(mutex_);
    start_trimmer();
    auto [ptr, size] = take_cached(wanted);
    if (ptr == nullptr) {
      // A new block: first give back the least recently freed idle ones that would take the
      // pool past the most it ever had in use (or past what this request itself needs).
      const size_t limit = std::max(peak_in_use_bytes_, in_use_bytes_ + size);
      while (!idle_.empty() && in_use_bytes_ + cached_bytes_ + size > limit) free_oldest_idle();
      ptr = map_block(size);
    }
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
    return {int64_t(in_use_bytes_), int64_t(cached_bytes_), int64_t(peak_in_use_bytes_)};
  }

  void empty_cache() {
    std::lock_guard<std::mutex> lock(mutex_);
    free_all_idle();
  }

  void set_idle_seconds(double seconds) {
    TORCH_CHECK(seconds >= 0, "the pool's idle time must be >= 0 seconds, got ", seconds);
    std::lock_guard<std::mutex> lock(mutex_);
    idle_seconds_ = seconds;
    wake_.notify_all();
  }

  // fork(): the forking thread holds the lock across it, so the child's copy is consistent
  // and unlocked; threads do not survive fork, so the child starts its own trimmer.
  void before_fork() { mutex_.lock(); }
  void after_fork_in_parent() { mutex_.unlock(); }
  void after_fork_in_child() {
    trimmer_running_ = false;
    mutex_.unlock();
  }

  static PoolingAllocator* instance;

 private:
  struct IdleBlock {
    void* ptr;
    size_t size;
    Clock::time_point freed;
  };
  using IdleList = std::list<IdleBlock>;  // least recently freed first

  // The smallest idle block that fits with at most a quarter to spare (of that size, the one
  // freed last: blocks a loop no longer needs then age and go back), and its size; or null and
  // the size to allocate.
  std::pair<void*, size_t> take_cached(size_t size) {
    const auto smallest = by_size_.lower_bound(size);
    if (smallest == by_size_.end() || smallest->first > size + size / 4) return {nullptr, size};
    const auto it = std::prev(by_size_.upper_bound(smallest->first));
    const IdleBlock block = *it->second;
    idle_.erase(it->second);
    by_size_.erase(it);
    cached_bytes_ -= block.size;
    return {block.ptr, block.size};
  }

  void free_oldest_idle() {
    const IdleBlock block = idle_.front();
    auto range = by_size_.equal_range(block.size);
    for (auto it = range.first; it != range.second; ++it) {
      if (it->second == idle_.begin()) {
        by_size_.erase(it);
        break;
      }
    }
    idle_.pop_front();
    cached_bytes_ -= block.size;
    unmap_block(block.ptr, block.size);
  }

  void free_all_idle() {
    for (const IdleBlock& block : idle_) unmap_block(block.ptr, block.size);
    idle_.clear();
    by_size_.clear();
    cached_bytes_ = 0;
  }

  // Starts the trimming thread if it is not running (under the lock).
  void start_trimmer() {
    if (trimmer_running_) return;
    trimmer_running_ = true;
    std::thread([this] { trim_when_idle(); }).detach();
  }

  // Gives back each block that has been idle for the idle time: all of them once the ops stop,
  // and in a loop that runs on, those it no longer uses (a shape measured once, say).
  void trim_when_idle() {
    std::unique_lock<std::mutex> lock(mutex_);
    while (true) {
      if (idle_.empty()) {
        wake_.wait(lock);  // woken when a block goes idle or the idle time changes
        continue;
      }
      const auto idle_for = std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(idle_seconds_));
      const auto now = Clock::now();
      if (now < idle_.front().freed + idle_for) {
        wake_.wait_until(lock, idle_.front().freed + idle_for);
        continue;
      }
      while (!idle_.empty() && idle_.front().freed + idle_for <= now) free_oldest_idle();
      malloc_trim(0);  // and what glibc keeps of the small buffers freed meanwhile
    }
  }

  // Deleter of every pointer this allocator returned, pooled or not: the fallback's own
  // deleters stay attached to what it allocated, so only raw_deallocate lands here unpooled.
  static void release(void* ptr) {
    PoolingAllocator* self = instance;
    {
      std::unique_lock<std::mutex> lock(self->mutex_);
      const auto it = self->in_use_.find(ptr);
      if (it != self->in_use_.end()) {
        const size_t size = it->second;
        self->in_use_.erase(it);
        self->in_use_bytes_ -= size;
        self->report(ptr, -int64_t(size));
        self->start_trimmer();
        const bool was_empty = self->idle_.empty();
        const auto block = self->idle_.insert(self->idle_.end(), IdleBlock{ptr, size, Clock::now()});
        self->by_size_.emplace(size, block);
        self->cached_bytes_ += size;
        if (was_empty) self->wake_.notify_all();
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
  std::condition_variable wake_;
  std::unordered_map<void*, size_t> in_use_;
  IdleList idle_;
  std::multimap<size_t, IdleList::iterator> by_size_;
  size_t in_use_bytes_ = 0, cached_bytes_ = 0, peak_in_use_bytes_ = 0;
  double idle_seconds_;
  bool trimmer_running_ = false;
};

PoolingAllocator* PoolingAllocator::instance = nullptr;

PoolingAllocator& pool() {
  static std::once_flag installed;
  std::call_once(installed, [] {
    // Leaked on purpose: pooled tensors can be freed during interpreter shutdown, and the
    // trimming thread may still be waiting on it then.
    PoolingAllocator::instance = new PoolingAllocator(c10::GetCPUAllocator());
    c10::SetCPUAllocator(PoolingAllocator::instance, /*priority=*/1);
    pthread_atfork([] { PoolingAllocator::instance->before_fork(); },
                   [] { PoolingAllocator::instance->after_fork_in_parent(); },
                   [] { PoolingAllocator::instance->after_fork_in_child(); });
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

// The questions below do not put the pool in place; only setting its idle time does.
BufferPoolStats buffer_pool_stats() {
  PoolingAllocator* installed = PoolingAllocator::instance;
  return installed ? installed->stats() : BufferPoolStats{0, 0, 0};
}

void buffer_pool_empty_cache() {
  if (PoolingAllocator* installed = PoolingAllocator::instance) installed->empty_cache();
}

void buffer_pool_set_idle_seconds(double seconds) {
  if (pool_enabled()) pool().set_idle_seconds(seconds);
}

}  // namespace unet_fast
