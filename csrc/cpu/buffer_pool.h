// A pool for the large CPU buffers of unet_fast's ops. glibc returns every large freed block
// to the OS, so each new activation or gradient of a U-Net step pays a page fault per 4 KiB
// (about a fifth of a 572x572 training step). While a PooledAllocations guard is alive on a
// thread, the CPU allocations of that thread of 1 MiB or more (those of the op's own kernels
// and of the ATen calls it makes) come from blocks the pool kept, and go back to it when
// freed; other allocations, and other threads, pass through to torch's allocator. The pool
// reports its allocations to the torch profiler as in use, like the default allocator. It
// holds at most as much as it ever had in use at once, and gives back each block left idle
// for UNET_FAST_CPU_POOL_IDLE_S seconds (default 30).
// UNET_FAST_CPU_POOL=0 turns it off.
#pragma once

#include <cstdint>

namespace unet_fast {

class PooledAllocations {
 public:
  PooledAllocations();
  ~PooledAllocations();
  PooledAllocations(const PooledAllocations&) = delete;
  PooledAllocations& operator=(const PooledAllocations&) = delete;

 private:
  bool outer_;
};

struct BufferPoolStats {
  int64_t in_use_bytes;       // handed out and not yet freed
  int64_t cached_bytes;       // freed and kept for reuse
  int64_t peak_in_use_bytes;  // the most ever in use at once: the bound on in use + cached
};

BufferPoolStats buffer_pool_stats();

// Gives the cached blocks back to the OS.
void buffer_pool_empty_cache();

// Seconds a cached block may stay idle before it is given back.
void buffer_pool_set_idle_seconds(double seconds);

}  // namespace unet_fast
