// The threads of a parallel region, one to a CPU. Where every CPU the process may use runs one
// of its threads and another process keeps a core busy, the scheduler has three threads for two
// CPUs and may leave two of ours on one CPU for seconds: then the work, however it is handed
// out, gets one CPU instead of the one and a half left to it (the forward of 64 -> 64 at 570 ran
// 2.06x slower beside a spinning process, against 1.38-1.44x with our threads on their own CPUs).
// While one of our regions runs, its threads are held one to a CPU: the calling thread for the
// region's length only, since the threads and processes it starts later inherit its CPUs; the
// pool's other threads from then on. Only where the threads are as many as the caller's CPUs:
// with more CPUs than threads the scheduler can move a thread to a free one.
// UNET_FAST_PIN_THREADS=0 leaves the placement to the OS.
#pragma once

#include <cstdint>
#include <thread>
#include <vector>

namespace unet_fast {

class ThreadPlacement {
 public:
  // On the calling thread, before a region of `threads` threads.
  explicit ThreadPlacement(int64_t threads);
  ~ThreadPlacement();  // gives the calling thread back its CPUs
  ThreadPlacement(const ThreadPlacement&) = delete;
  ThreadPlacement& operator=(const ThreadPlacement&) = delete;

  // In each thread of the region, `thread` its index in it (0 .. threads - 1).
  void place(int64_t thread);

 private:
  std::vector<int> cpus_;  // the region's CPUs, one a thread; none where the OS places them
  std::vector<int> caller_cpus_;
  std::thread::id caller_;
  bool caller_placed_ = false;
};

// The CPUs a region of `threads` threads started on this thread now would hold its threads on,
// in the order of their indices: empty where it would leave them to the OS.
std::vector<int> placement_cpus(int64_t threads);

// Whether regions place their threads (initially unless UNET_FAST_PIN_THREADS=0).
bool thread_placement_enabled();
void set_thread_placement_enabled(bool enabled);

}  // namespace unet_fast
