// The pool behind PooledAllocations: a c10 CPU allocator that serves pooled requests from the
// pages of freed blocks and passes every other request, untouched, to the allocator it wraps.
// It is put in front of torch's CPU allocator the first time a guard is made, and never
// removed: tensors it handed out may outlive any guard.
//
// Pages, not sizes, are what it recycles. A step asks for buffers of dozens of sizes in an
// order that changes between layers, so a pool that reuses a freed block only for a request of
// about its size keeps missing: bounded to its peak, it gave back and mapped anew ~2 GiB a
// 572x572 training step, every new page zeroed by the kernel on first touch (0.3-0.8 s of
// system time a step). Here a request takes the smallest idle block that fits, cut to size, or
// else a block assembled from idle ones: their pages are moved, with mremap, side by side into
// one new range, which costs a page-table update per 2 MiB instead of zeroing and faulting
// every page. New pages are mapped only for what the idle blocks cannot cover.
//
// Bounds: the blocks it holds, in use and idle, never add up to more than the most it ever had
// in use at once (one step's need), since a request uses every idle page before asking the OS
// for more; and a trimming thread gives back every block that has been idle for the idle time
// (and glibc's free heap, malloc_trim): all of them once the ops stop, and those a running loop
// no longer uses. Across fork() the child gets a pool that works (pthread_atfork: no lock held,
// its own trimming thread started when it is next used).
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
#include <utility>
#include <map>
#include <mutex>
#include <new>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

namespace unet_fast {
namespace {

constexpr size_t kMinPooledBytes = size_t(1) << 20;
constexpr size_t kHugePage = size_t(2) << 20;  // pooled sizes are multiples of this
// Longer than a slow step of a large network, so that a training loop, or a benchmark alternating
// with another model, keeps its blocks; short enough to give them back soon after the work stops.
constexpr double kDefaultIdleSeconds = 30.0;

thread_local bool pooling = false;

size_t rounded(size_t n) { return (n + kHugePage - 1) / kHugePage * kHugePage; }

using Clock = std::chrono::steady_clock;

// `size` bytes mapped straight from the OS, so that freeing them gives them back (glibc would
// keep freed blocks below its mmap threshold, up to 32 MiB, in its heap), aligned to 2 MiB and
// asked to use transparent huge pages: a first touch then faults once per 2 MiB instead of once
// per 4 KiB, and moving pages keeps them huge.
char* map_pages(size_t size) {
  void* mapped = mmap(nullptr, size + kHugePage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  TORCH_CHECK(mapped != MAP_FAILED, "unet_fast's CPU buffer pool could not map ", size, " bytes: out of memory");
  const auto begin = reinterpret_cast<uintptr_t>(mapped);
  const uintptr_t aligned = (begin + kHugePage - 1) & ~(kHugePage - 1);
  if (aligned > begin) munmap(mapped, aligned - begin);
  if (const size_t tail = begin + size + kHugePage - (aligned + size)) munmap(reinterpret_cast<void*>(aligned + size), tail);
  madvise(reinterpret_cast<void*>(aligned), size, MADV_HUGEPAGE);
  return reinterpret_cast<char*>(aligned);
}

// Moves the pages of [from, from + size), one mapping of the process, to `to`, replacing what
// was mapped there; false if the OS refused (the pages then stay where they were).
bool move_pages(char* from, size_t size, char* to) {
  return mremap(from, size, size, MREMAP_MAYMOVE | MREMAP_FIXED, to) != MAP_FAILED;
}

// A block of pooled memory: contiguous addresses over one or more pieces, each lying within one
// mapping of the process (mremap moves only a range of one mapping; the pages of an assembled
// block come from several). Every piece is a multiple of 2 MiB.
struct Block {
  char* ptr = nullptr;
  size_t size = 0;
  std::vector<size_t> pieces;

  // Splits off and returns the first `head` bytes (a multiple of 2 MiB); this keeps the rest.
  Block take_front(size_t head) {
    Block front{ptr, head, {}};
    size_t taken = 0;
    auto piece = pieces.begin();
    while (taken < head) {
      const size_t part = std::min(*piece, head - taken);
      front.pieces.push_back(part);
      taken += part;
      if (part == *piece) {
        ++piece;
      } else {
        *piece -= part;
      }
    }
    pieces.erase(pieces.begin(), piece);
    ptr += head;
    size -= head;
    return front;
  }
};

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
    const size_t size = rounded(n);
    std::unique_lock<std::mutex> lock(mutex_);
    start_trimmer();
    Block block = take_idle_fitting(size);
    if (block.ptr == nullptr) block = assemble(size);
    char* const ptr = block.ptr;
    in_use_bytes_ += block.size;
    peak_in_use_bytes_ = std::max(peak_in_use_bytes_, in_use_bytes_);
    report(ptr, int64_t(block.size));
    in_use_.emplace(ptr, std::move(block));
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
  // and unlocked; threads do not survive fork, so the child starts its own trimmer. The
  // condition variable is made anew in the child: its copy still counts the parent's trimmer
  // as a waiter, and glibc's notify waits for that waiter forever. It is not destroyed first,
  // since destroying it waits for the same waiter; a condition variable holds no resources.
  void before_fork() { mutex_.lock(); }
  void after_fork_in_parent() { mutex_.unlock(); }
  void after_fork_in_child() {
    new (&wake_) std::condition_variable;
    trimmer_running_ = false;
    mutex_.unlock();
  }

  static PoolingAllocator* instance;

 private:
  struct IdleBlock {
    Block block;
    Clock::time_point freed;
  };
  using IdleList = std::list<IdleBlock>;  // least recently freed first

  // Takes an idle block out of the pool; returns the next one.
  IdleList::iterator take(IdleList::iterator it, Block& taken) {
    auto range = by_size_.equal_range(it->block.size);
    for (auto entry = range.first; entry != range.second; ++entry) {
      if (entry->second == it) {
        by_size_.erase(entry);
        break;
      }
    }
    cached_bytes_ -= it->block.size;
    taken = std::move(it->block);
    return idle_.erase(it);
  }

  void put_idle(Block block, Clock::time_point freed, IdleList::iterator before) {
    cached_bytes_ += block.size;
    const size_t size = block.size;
    by_size_.emplace(size, idle_.insert(before, IdleBlock{std::move(block), freed}));
  }

  // `size` bytes of the idle block that fits best: the smallest one that holds it (of that size,
  // the one freed last, so that blocks a loop no longer needs age and go back), or its front,
  // the rest staying idle as it was. Null if none.
  Block take_idle_fitting(size_t size) {
    const auto smallest = by_size_.lower_bound(size);
    if (smallest == by_size_.end()) return {};
    const auto chosen = std::prev(by_size_.upper_bound(smallest->first))->second;
    const Clock::time_point freed = chosen->freed;
    Block block;
    const auto next = take(chosen, block);
    if (block.size == size) return block;
    Block front = block.take_front(size);
    put_idle(std::move(block), freed, next);
    return front;
  }

  // A block of `size` bytes made of the pages of idle blocks, the largest first, moved side by
  // side into a new range; new pages where they do not cover it.
  Block assemble(size_t size) {
    Block assembled{map_pages(size), size, {}};
    size_t filled = 0;
    while (filled < size && !idle_.empty()) {
      const auto largest = std::prev(by_size_.end())->second;
      const Clock::time_point freed = largest->freed;
      Block source;
      const auto next = take(largest, source);
      if (source.size > size - filled) {
        Block front = source.take_front(size - filled);
        put_idle(std::move(source), freed, next);
        source = std::move(front);
      }
      for (const size_t piece : source.pieces) {
        if (!move_pages(source.ptr, piece, assembled.ptr + filled)) {
          munmap(source.ptr, source.size);  // what is left of it; the range keeps its new pages
          break;
        }
        assembled.pieces.push_back(piece);
        source.ptr += piece;
        source.size -= piece;
        filled += piece;
      }
      if (source.size > 0) break;
    }
    if (filled < size) assembled.pieces.push_back(size - filled);  // the new pages mapped there
    return assembled;
  }

  void free_oldest_idle() {
    Block block;
    take(idle_.begin(), block);
    munmap(block.ptr, block.size);
  }

  void free_all_idle() {
    while (!idle_.empty()) free_oldest_idle();
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
        Block block = std::move(it->second);
        self->in_use_.erase(it);
        self->in_use_bytes_ -= block.size;
        self->report(ptr, -int64_t(block.size));
        self->start_trimmer();
        const bool was_empty = self->idle_.empty();
        self->put_idle(std::move(block), Clock::now(), self->idle_.end());
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
  std::unordered_map<void*, Block> in_use_;
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
