#include "thread_placement.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <atomic>
#include <cstdlib>
#include <string_view>

#if defined(__linux__)
#include <sched.h>
#endif

namespace unet_fast {
namespace {

std::atomic<bool>& placement_enabled() {
  static std::atomic<bool> enabled = [] {
    const char* variable = std::getenv("UNET_FAST_PIN_THREADS");
    const std::string_view setting = variable == nullptr ? "1" : variable;
    TORCH_CHECK(setting == "0" || setting == "1",
                "UNET_FAST_PIN_THREADS must be 0 (the OS places the threads) or 1 (one to a CPU), got '", setting,
                "'");
    return setting == "1";
  }();
  return enabled;
}

#if defined(__linux__)
// The CPUs the calling thread may run on, in increasing order.
std::vector<int> this_threads_cpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  std::vector<int> cpus;
  if (sched_getaffinity(0, sizeof(set), &set) != 0) return cpus;
  for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
    if (CPU_ISSET(cpu, &set)) cpus.push_back(cpu);
  }
  return cpus;
}

// Holds the calling thread on `cpus`; a failure (a CPU taken from the process meanwhile)
// leaves it where it was.
void hold_this_thread_on(const std::vector<int>& cpus) {
  cpu_set_t set;
  CPU_ZERO(&set);
  for (const int cpu : cpus) CPU_SET(cpu, &set);
  (void)sched_setaffinity(0, sizeof(set), &set);
}
#else
std::vector<int> this_threads_cpus() { return {}; }
void hold_this_thread_on(const std::vector<int>&) {}
#endif

// The CPU this pool thread was last held on by a region (-1: none).
thread_local int held_cpu = -1;

}  // namespace

bool thread_placement_enabled() { return placement_enabled().load(std::memory_order_relaxed); }

void set_thread_placement_enabled(bool enabled) { placement_enabled().store(enabled, std::memory_order_relaxed); }

std::vector<int> placement_cpus(int64_t threads) {
  if (threads < 2 || !thread_placement_enabled() || at::in_parallel_region()) return {};
  std::vector<int> cpus = this_threads_cpus();
  if (int64_t(cpus.size()) != threads) return {};
  return cpus;
}

ThreadPlacement::ThreadPlacement(int64_t threads) : cpus_(placement_cpus(threads)) {
  if (cpus_.empty()) return;
  caller_cpus_ = cpus_;  // placement_cpus found the caller on exactly these
  caller_ = std::this_thread::get_id();
}

ThreadPlacement::~ThreadPlacement() {
  if (caller_placed_) hold_this_thread_on(caller_cpus_);
}

void ThreadPlacement::place(int64_t thread) {
  if (cpus_.empty() || thread < 0 || thread >= int64_t(cpus_.size())) return;
  const int cpu = cpus_[thread];
  if (std::this_thread::get_id() == caller_) {
    hold_this_thread_on({cpu});
    caller_placed_ = true;  // only the caller writes it
    return;
  }
  if (held_cpu == cpu) return;
  hold_this_thread_on({cpu});
  held_cpu = cpu;
}

}  // namespace unet_fast
