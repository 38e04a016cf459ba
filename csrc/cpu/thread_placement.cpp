#include "thread_placement.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
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

// Holds the calling thread on `cpu`; a failure (the CPU taken from the process meanwhile)
// leaves it where it was.
void hold_this_thread_on(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  (void)sched_setaffinity(0, sizeof(set), &set);
}

// The CPU the calling thread runs on now (-1: unknown).
int this_threads_cpu() { return sched_getcpu(); }
#else
std::vector<int> this_threads_cpus() { return {}; }
void hold_this_thread_on(int) {}
int this_threads_cpu() { return -1; }
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

ThreadPlacement::ThreadPlacement(int64_t threads) {
  const std::vector<int> cpus = placement_cpus(threads);
  const int here = this_threads_cpu();
  if (std::find(cpus.begin(), cpus.end(), here) == cpus.end()) return;
  for (const int cpu : cpus) {
    if (cpu != here) other_cpus_.push_back(cpu);
  }
  caller_ = std::this_thread::get_id();
}

void ThreadPlacement::place(int64_t thread) const {
  if (other_cpus_.empty() || thread < 1 || thread > int64_t(other_cpus_.size())) return;
  if (std::this_thread::get_id() == caller_) return;
  const int cpu = other_cpus_[thread - 1];
  if (held_cpu == cpu) return;
  hold_this_thread_on(cpu);
  held_cpu = cpu;
}

}  // namespace unet_fast
