// A register-blocked GEMM for the Winograd points: six rows of transformed tiles by a step of
// output channels, their sums in registers (AVX-512: 64 channels, 24 accumulators; AVX2: 16,
// 12), the packed weights' rows read from cache while the tiles' values are broadcast, kDepth
// rows of weights a pass, so that they stay in L1 and each sum has at most kDepth terms before
// it is added to the result. ATen's GEMM on the same small matrices pays a call and a packing of
// the weights per point, which pieces of tens of tiles cannot amortize. One template in GCC's
// vector extensions, inlined into a function for each instruction set, makes both kernels.
#include "point_gemm.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string_view>

#include "target_clones.h"

namespace unet_fast {
namespace {

constexpr int kRows = 6;         // rows a step: 6 x 4 accumulators, 4 weight vectors, a broadcast (AVX-512)
constexpr int64_t kDepth = 128;  // weight rows a pass: 32 KiB with AVX-512, 8 with AVX2

// Rows of a piece up to which each pass asks for the next pass's weights (rows_product). On the
// AVX2 EPYC (Zen 3), 2026-12-08: 128 -> 128 at 282 and 128 -> 256 at 140 by F(6x6), 32 rows, took
// 1.05-1.20x less time in the forward and 1.05-1.10x in the data gradient; 64 rows (64 channels)
// and 56 (F(4x4)) moved within the noise either way.
constexpr int64_t kAskAheadRows = 48;

// Vectors of `Lanes` floats, `Width` of them a row of a step; `AskAhead`: whether the passes ask
// for the next weights (measured with AVX2 only).
template <int Lanes, int Width, bool AskAhead>
struct Step {
  typedef float Vector __attribute__((vector_size(4 * Lanes)));
  static constexpr int64_t kColumns = int64_t(Lanes) * Width;
  static constexpr bool kAskAhead = AskAhead;
};

// m (Rows x `columns` <= S::kColumns, row stride ldm) = (m if `accumulate`) + u (Rows x depth,
// row stride ldu) @ b (depth x S::kColumns, packed). The pass's products are summed on their
// own and then added: one sum of 1024 terms had a norm-wise error of 1.2e-5 (F(6x6), 1024
// channels). Unless null, `next` (depth x S::kColumns) is asked into the cache a row a step.
template <class S, int Rows>
__attribute__((always_inline)) inline void block_product(const float* u, int64_t ldu, const float* b, int64_t depth,
                                                         float* m, int64_t ldm, int64_t columns, bool accumulate,
                                                         const float* next) {
  using Vector = typename S::Vector;
  constexpr int kLanes = sizeof(Vector) / sizeof(float), kWidth = S::kColumns / kLanes;
  constexpr int kLineFloats = 16;
  Vector acc[Rows][kWidth] = {};
  for (int64_t i = 0; i < depth; ++i, b += S::kColumns) {
    if (next != nullptr) {
#pragma GCC unroll 4
      for (int line = 0; line < S::kColumns / kLineFloats; ++line) {
        __builtin_prefetch(next + i * S::kColumns + line * kLineFloats);
      }
    }
    Vector weights[kWidth];
#pragma GCC unroll 4
    for (int j = 0; j < kWidth; ++j) std::memcpy(&weights[j], b + j * kLanes, sizeof(Vector));
#pragma GCC unroll 6
    for (int r = 0; r < Rows; ++r) {
      const float value = u[r * ldu + i];
#pragma GCC unroll 4
      for (int j = 0; j < kWidth; ++j) acc[r][j] += value * weights[j];  // one FMA: see products_avx512
    }
  }
  // Unrolled, so that the sums stay in registers: a loop over them would keep them in memory
  // and cost a sixth of the products at depth 64.
#pragma GCC unroll 6
  for (int r = 0; r < Rows; ++r) {
#pragma GCC unroll 4
    for (int j = 0; j < kWidth; ++j) {
      float* out = m + r * ldm + j * kLanes;
      const int64_t left = std::min<int64_t>(columns - j * kLanes, kLanes);
      if (left == kLanes) {
        Vector sum = acc[r][j];
        if (accumulate) {
          Vector old;
          std::memcpy(&old, out, sizeof(Vector));
          sum += old;
        }
        std::memcpy(out, &sum, sizeof(Vector));
        continue;
      }
      float lanes[kLanes];
      std::memcpy(lanes, &acc[r][j], sizeof(Vector));
      for (int64_t c = 0; c < left; ++c) out[c] = accumulate ? out[c] + lanes[c] : lanes[c];
    }
  }
}

// block_product over `rows` rows in blocks of at most kRows, evened out: a last block of one or
// two rows has too few sums to hide the multiply-adds' latency (32 rows went as 5 x 6 + 2).
// The first block asks for the weights of the next pass (`next`, unless null), which come from
// L3 while the pass's own weights are in L1: a piece's few rows leave too little time to wait.
template <class S>
__attribute__((always_inline)) inline void rows_product(const float* u, int64_t rows, int64_t ldu, const float* b,
                                                        int64_t depth, float* m, int64_t ldm, int64_t columns,
                                                        bool accumulate, const float* next) {
  const int64_t blocks = (rows + kRows - 1) / kRows, fewer = rows / std::max<int64_t>(blocks, 1);
  const int64_t more = rows - fewer * blocks;  // the first `more` blocks take fewer + 1 rows
  for (int64_t block = 0, r = 0; block < blocks; ++block) {
    const int64_t count = fewer + (block < more);
    const float* ub = u + r * ldu;
    float* mb = m + r * ldm;
    const float* ahead = block == 0 ? next : nullptr;
    r += count;
    switch (count) {
      case 6: block_product<S, 6>(ub, ldu, b, depth, mb, ldm, columns, accumulate, ahead); break;
      case 5: block_product<S, 5>(ub, ldu, b, depth, mb, ldm, columns, accumulate, ahead); break;
      case 4: block_product<S, 4>(ub, ldu, b, depth, mb, ldm, columns, accumulate, ahead); break;
      case 3: block_product<S, 3>(ub, ldu, b, depth, mb, ldm, columns, accumulate, ahead); break;
      case 2: block_product<S, 2>(ub, ldu, b, depth, mb, ldm, columns, accumulate, ahead); break;
      default: block_product<S, 1>(ub, ldu, b, depth, mb, ldm, columns, accumulate, ahead); break;
    }
  }
}

template <class S>
__attribute__((always_inline)) inline void products(const float* u, int64_t u_point_stride, int64_t points,
                                                    int64_t rows, int64_t k, const float* packed, int64_t n, float* m,
                                                    int64_t m_point_stride) {
  const int64_t blocks = (n + S::kColumns - 1) / S::kColumns;
  // The passes' weights follow each other in memory, across blocks and points.
  const float* end = packed + points * blocks * k * S::kColumns;
  const bool ask = S::kAskAhead && rows <= kAskAheadRows;
  for (int64_t p = 0; p < points; ++p) {
    for (int64_t block = 0; block < blocks; ++block) {
      const float* b = packed + (p * blocks + block) * k * S::kColumns;
      const int64_t column = block * S::kColumns, columns = std::min(S::kColumns, n - column);
      for (int64_t first = 0; first < k; first += kDepth) {
        const int64_t depth = std::min(kDepth, k - first);
        const float* next = b + (first + depth) * S::kColumns;
        rows_product<S>(u + p * u_point_stride + first, rows, k, b + first * S::kColumns, depth,
                        m + p * m_point_stride + column, n, columns, /*accumulate=*/first > 0,
                        ask && next + depth * S::kColumns <= end ? next : nullptr);
      }
    }
  }
}

#if defined(__x86_64__) && defined(__GNUC__)
// The extension is built with -ffp-contract=off, so that the transforms round as they are
// written; here each multiply-add of the products becomes one FMA.
__attribute__((target("avx512f"), optimize("fp-contract=fast"))) void products_avx512(
    const float* u, int64_t u_point_stride, int64_t points, int64_t rows, int64_t k, const float* packed, int64_t n,
    float* m, int64_t m_point_stride) {
  products<Step<16, 4, false>>(u, u_point_stride, points, rows, k, packed, n, m, m_point_stride);
}

__attribute__((target("avx2,fma"), optimize("fp-contract=fast"))) void products_avx2(
    const float* u, int64_t u_point_stride, int64_t points, int64_t rows, int64_t k, const float* packed, int64_t n,
    float* m, int64_t m_point_stride) {
  products<Step<8, 2, true>>(u, u_point_stride, points, rows, k, packed, n, m, m_point_stride);
}

bool cpu_has_avx2_fma() {
  static const bool avx2_fma = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return avx2_fma;
}
#endif

using Products = void (*)(const float*, int64_t, int64_t, int64_t, int64_t, const float*, int64_t, float*, int64_t);

struct Kernel {
  const char* name;
  Products products;
  int64_t columns;  // of a step, and of a block of the packed weights
};

// The kernel for this CPU and UNET_FAST_POINT_GEMM, chosen at the first call.
Kernel chosen_kernel() {
  static const Kernel chosen = [] {
    const char* variable = std::getenv("UNET_FAST_POINT_GEMM");
    const std::string_view setting = variable == nullptr ? "1" : variable;
    TORCH_CHECK(setting == "0" || setting == "1" || setting == "avx2",
                "UNET_FAST_POINT_GEMM must be 0 (ATen's GEMM), 1 (the best kernel for this CPU) or avx2, got '",
                setting, "'");
#if defined(__x86_64__) && defined(__GNUC__)
    if (setting != "0" && setting != "avx2" && cpu_has_avx512()) return Kernel{"avx512", products_avx512, 64};
    if (setting != "0" && cpu_has_avx2_fma()) return Kernel{"avx2", products_avx2, 16};
#endif
    return Kernel{nullptr, nullptr, 0};
  }();
  return chosen;
}

}  // namespace

const char* point_products_kernel() { return chosen_kernel().name; }

int64_t point_products_columns() { return chosen_kernel().columns; }

void point_products(const float* u, int64_t u_point_stride, int64_t points, int64_t rows, int64_t k,
                    const float* packed, int64_t n, float* m, int64_t m_point_stride) {
  const Products products = chosen_kernel().products;
  TORCH_CHECK(products != nullptr, "point_products: no kernel runs here (point_products_kernel())");
  products(u, u_point_stride, points, rows, k, packed, n, m, m_point_stride);
}

}  // namespace unet_fast
