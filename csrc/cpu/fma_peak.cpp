// Twelve independent accumulators a thread: more than an FMA's latency times the FMA units (4 x
// 2 on the x86 cores of this project), so the units, not the dependencies, set the rate. A
// nominal peak (cores x units x lanes x GHz) overstates what a loaded chip sustains: AVX-512
// runs at a lower clock than scalar code, and that clock differs between hosts.
#include "fma_peak.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <chrono>
#include <cmath>

#include "target_clones.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

namespace unet_fast {
namespace {

constexpr int kAccumulators = 12;
constexpr long kRoundsPerCheck = 1 << 16;  // FMA rounds between two looks at the clock

// Counts rounds of kAccumulators x `lanes` FMAs until `seconds` have passed.
class Stopwatch {
 public:
  Stopwatch(double seconds, int lanes) : seconds_(seconds), lanes_(lanes), start_(Clock::now()) {}
  // Counts kRoundsPerCheck more rounds; whether there is time for more.
  bool lap() {
    rounds_ += kRoundsPerCheck;
    elapsed_ = std::chrono::duration<double>(Clock::now() - start_).count();
    return elapsed_ < seconds_;
  }
  double gflops() const { return 2.0 * kAccumulators * lanes_ * double(rounds_) / elapsed_ / 1e9; }

 private:
  using Clock = std::chrono::steady_clock;
  double seconds_;
  int lanes_;
  Clock::time_point start_;
  long rounds_ = 0;
  double elapsed_ = 0;
};

#if defined(__x86_64__) && defined(__GNUC__)

__attribute__((target("avx512f"))) double avx512_gflops(double seconds, float& sink) {
  __m512 acc[kAccumulators];
  for (int i = 0; i < kAccumulators; ++i) acc[i] = _mm512_set1_ps(0.001f * float(i));
  const __m512 scale = _mm512_set1_ps(0.999999f), shift = _mm512_set1_ps(1e-7f);
  Stopwatch watch(seconds, 16);
  do {
    for (long round = 0; round < kRoundsPerCheck; ++round) {
#pragma GCC unroll 12
      for (int i = 0; i < kAccumulators; ++i) acc[i] = _mm512_fmadd_ps(acc[i], scale, shift);
    }
  } while (watch.lap());
  for (int i = 0; i < kAccumulators; ++i) sink += _mm512_reduce_add_ps(acc[i]);
  return watch.gflops();
}

__attribute__((target("avx2,fma"))) double avx2_gflops(double seconds, float& sink) {
  __m256 acc[kAccumulators];
  for (int i = 0; i < kAccumulators; ++i) acc[i] = _mm256_set1_ps(0.001f * float(i));
  const __m256 scale = _mm256_set1_ps(0.999999f), shift = _mm256_set1_ps(1e-7f);
  Stopwatch watch(seconds, 8);
  do {
    for (long round = 0; round < kRoundsPerCheck; ++round) {
#pragma GCC unroll 12
      for (int i = 0; i < kAccumulators; ++i) acc[i] = _mm256_fmadd_ps(acc[i], scale, shift);
    }
  } while (watch.lap());
  alignas(32) float lanes[8];
  for (int i = 0; i < kAccumulators; ++i) {
    _mm256_store_ps(lanes, acc[i]);
    for (float lane : lanes) sink += lane;
  }
  return watch.gflops();
}

#endif

double scalar_gflops(double seconds, float& sink) {
  float acc[kAccumulators];
  for (int i = 0; i < kAccumulators; ++i) acc[i] = 0.001f * float(i);
  Stopwatch watch(seconds, 1);
  do {
    for (long round = 0; round < kRoundsPerCheck; ++round) {
      for (float& value : acc) value = std::fma(value, 0.999999f, 1e-7f);
    }
  } while (watch.lap());
  for (float value : acc) sink += value;
  return watch.gflops();
}

double one_thread_gflops(double seconds, float& sink) {
#if defined(__x86_64__) && defined(__GNUC__)
  if (cpu_has_avx512()) return avx512_gflops(seconds, sink);
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return avx2_gflops(seconds, sink);
#endif
  return scalar_gflops(seconds, sink);
}

}  // namespace

std::vector<double> fma_peak_gflops(double seconds) {
  TORCH_CHECK(std::isfinite(seconds) && seconds > 0 && seconds <= 60,
              "fma_peak_gflops: seconds must be in (0, 60], got ", seconds);
  const int64_t threads = at::get_num_threads();
  std::vector<double> rates(threads, 0.0);
  std::vector<float> sinks(threads, 0.0f);  // the sums, read below so that no loop is dropped
  at::parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t thread = begin; thread < end; ++thread) rates[thread] = one_thread_gflops(seconds, sinks[thread]);
  });
  volatile float kept = 0;
  for (float sink : sinks) kept = kept + sink;
  return rates;
}

}  // namespace unet_fast
