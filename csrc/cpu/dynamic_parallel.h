// Work handed out a piece at a time from a shared counter inside one parallel region. Where
// at::parallel_for gives each thread one equal part of a range, a region lasts as long as its
// slowest part: on a machine where another process shares a core, the thread on that core
// holds everyone up at every region's end. Handed out piece by piece, the free thread takes
// more pieces, and a pass that would need a region per stage (transform, multiply, transform
// back) needs one in all. torch's other threads are held off the caller's CPU, one to a CPU
// (thread_placement.h), so that a shared core is shared with one of the region's threads only.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

#include "thread_placement.h"

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
  const ThreadPlacement placement(threads);
  at::parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t thread = begin; thread < end; ++thread) {
      placement.place(thread);
      auto worker = make_worker(thread);
      for (int64_t piece; (piece = next.fetch_add(1, std::memory_order_relaxed)) < pieces;) worker(piece);
    }
  });
}

// at::parallel_for's contract, f(begin, end) over disjoint parts that cover [begin, end), none
// smaller than `grain` but the last, with the parts (about four a thread) handed out one at a
// time. Work of fewer than two grains runs on the calling thread, in no parallel region.
template <typename F>
void parallel_pieces(int64_t begin, int64_t end, int64_t grain, const F& f) {
  const int64_t size = end - begin;
  if (size <= 0) return;
  const int64_t parts = 4 * at::get_num_threads();
  const int64_t part = std::max<int64_t>({grain, 1, (size + parts - 1) / parts});
  const int64_t pieces = (size + part - 1) / part;
  if (pieces == 1) {
    f(begin, end);
    return;
  }
  for_each_piece(pieces, worker_threads(pieces), [&](int64_t) {
    return [&](int64_t piece) {
      const int64_t first = begin + piece * part;
      f(first, std::min(end, first + part));
    };
  });
}

}  // namespace unet_fast
