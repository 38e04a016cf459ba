// The threads of a parallel region, one to a CPU. Where every CPU the process may use runs one
// of its threads and another process keeps a core busy, the scheduler has three threads for two
// CPUs and may leave two of ours on one CPU for seconds: then the work, however it is handed
// out, gets one CPU instead of the one and a half left to it (the forward of 64 -> 64 at 570 ran
// 1.91-2.07x slower beside a spinning process, against 1.38-1.44x with our threads on their own
// CPUs). So at each of our regions, torch's other threads are held on the CPUs other than the
// one the calling thread runs on then, one to a CPU, and stay there until a region finds the
// caller on another CPU. The calling thread is never held: the threads and processes it starts
// inherit its CPUs. Only where the threads are as many as the caller's CPUs: with CPUs to spare
// the scheduler can move a thread to a free one. UNET_FAST_PIN_THREADS=0 leaves them to the OS.
#pragma once

#include <cstdint>
#include <thread>
#include <vector>

namespace unet_fast {

class ThreadPlacement {
 public:
  // On the calling thread, before a region of `threads` threads.
  explicit ThreadPlacement(int64_t threads);

  // In each thread of the region, `thread` its index in it (0, the caller's, .. threads - 1).
  void place(int64_t thread) const;

 private:
  std::vector<int> other_cpus_;  // threads 1, 2, ..'s CPUs; none where the OS places them
  std::thread::id caller_;
};

// The CPUs a region of `threads` threads started on this thread would share out one to a
// thread (the caller's CPU at the time to the caller): empty where it leaves them to the OS.
std::vector<int> placement_cpus(int64_t threads);

// Whether regions place their threads (initially unless UNET_FAST_PIN_THREADS=0).
bool thread_placement_enabled();
void set_thread_placement_enabled(bool enabled);

}  // namespace unet_fast
