// Work handed out a piece at a time from a shared counter inside one parallel region. Where
// at::parallel_for gives each thread one equal part of a range, a region lasts as long as its
// slowest part: on a machine where another process shares a core, the thread on that core
// holds everyone up at every region's end. Handed out piece by piece, the free thread takes
// more pieces, and a pass that would need a region per stage (transform, multiply, transform
// back) needs one in all.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

namespace unet_fast {

// The threads worth starting for `pieces` pieces of work.
inline int64_t worker_threads(int64_t pieces) {
  return std::clamp<int64_t>(pieces, 1, at::get_num_threads());
}

// Calls make_worker(thread) once in each of `threads` threads (thread = 0 .. threads - 1), and
// then that worker(piece) for the pieces 0 .. pieces - 1 it takes: each piece exactly once, by
// whichever thread is free first. Nested in another parallel region, one thread takes them all.
template <typename MakeWorker>
void for_each_piece(int64_t pieces, int64_t threads, MakeWorker&& make_worker) {
  std::atomic<int64_t> next{0};
  at::parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t thread = begin; thread < end; ++thread) {
      auto worker = make_worker(thread);
      for (int64_t piece; (piece = next.fetch_add(1, std::memory_order_relaxed)) < pieces;) worker(piece);
    }
  });
}

}  // namespace unet_fast
