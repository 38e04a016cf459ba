// Twelve independent accumulators of Lanes floats a thread: more chains than an FMA's latency
// times the FMA units (4 x 2 on the x86 cores of this project), so the units, not the
// dependencies, set the rate. A nominal peak (cores x units x lanes x GHz) overstates what a
// loaded chip sustains: AVX-512 runs at a lower clock than scalar code, and that clock differs
// between hosts.
#include "fma_peak.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <chrono>
#include <cmath>

#include "target_clones.h"

namespace unet_fast {
namespace {

constexpr int kAccumulators = 12;
constexpr long kRoundsPerCheck = 1 << 16;  // rounds of multiply-adds between two looks at the clock

// GFLOP/s of rounds of kAccumulators x Lanes multiply-adds (fused where `Fused`: std::fma,
// which the vector targets below make one instruction) for about `seconds`. The sums go to
// `sink`, so the compiler cannot drop the loop. Inlined into each target's function, whose
// vector width its loops take.
template <int Lanes, bool Fused>
__attribute__((always_inline)) inline double multiply_add_gflops(double seconds, float& sink) {
  using Clock = std::chrono::steady_clock;
  constexpr float kScale = 0.999999f, kShift = 1e-7f;
  float acc[kAccumulators][Lanes];
  for (int i = 0; i < kAccumulators; ++i) {
    for (int l = 0; l < Lanes; ++l) acc[i][l] = 0.001f * float(i);
  }
  const auto start = Clock::now();
  long rounds = 0;
  double elapsed = 0;
  do {
    for (long round = 0; round < kRoundsPerCheck; ++round) {
#pragma GCC unroll 12
      for (int i = 0; i < kAccumulators; ++i) {
#pragma omp simd
        for (int l = 0; l < Lanes; ++l) {
          acc[i][l] = Fused ? std::fma(acc[i][l], kScale, kShift) : acc[i][l] * kScale + kShift;
        }
      }
    }
    rounds += kRoundsPerCheck;
    elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  } while (elapsed < seconds);
  for (int i = 0; i < kAccumulators; ++i) {
    for (int l = 0; l < Lanes; ++l) sink += acc[i][l];
  }
  return 2.0 * kAccumulators * Lanes * double(rounds) / elapsed / 1e9;
}

#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("avx512f"))) double avx512_gflops(double seconds, float& sink) {
  return multiply_add_gflops<16, true>(seconds, sink);
}

__attribute__((target("avx2,fma"))) double avx2_gflops(double seconds, float& sink) {
  return multiply_add_gflops<8, true>(seconds, sink);
}
#endif

double one_thread_gflops(double seconds, float& sink) {
#if defined(__x86_64__) && defined(__GNUC__)
  if (cpu_has_avx512()) return avx512_gflops(seconds, sink);
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return avx2_gflops(seconds, sink);
#endif
  return multiply_add_gflops<4, false>(seconds, sink);  // a multiply and an add, as this build's target allows
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
