// A register-blocked AVX-512 GEMM for the Winograd points: six rows of transformed tiles by 64
// output channels a step, 24 accumulators in registers, the packed weights' 64-wide rows read
// from cache while the tiles' values are broadcast, kDepth rows of weights a pass, so that they
// stay in L1 and each sum has at most kDepth terms before it is added to the result. ATen's
// GEMM on the same small matrices pays a call and a packing of the weights per point, which
// pieces of tens of tiles cannot amortize.
#include "point_gemm.h"

#include <c10/util/Exception.h>

#include <algorithm>

#include "target_clones.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define UNET_FAST_AVX512 __attribute__((target("avx512f")))
#endif

namespace unet_fast {
namespace {

constexpr int kRows = 6;         // rows a step: 6 x 4 accumulators, 4 weight vectors, a broadcast
constexpr int64_t kDepth = 128;  // weight rows a pass: 32 KiB

#ifdef UNET_FAST_AVX512

// m (Rows x `columns` <= 64, row stride ldm) = (m if `accumulate`) + u (Rows x depth, row
// stride ldu) @ b (depth x 64, packed). The pass's products are summed on their own and then
// added: one sum of 1024 terms had a norm-wise error of 1.2e-5 (F(6x6), 1024 channels).
template <int Rows>
UNET_FAST_AVX512 __attribute__((always_inline)) inline void block_product(const float* u, int64_t ldu, const float* b,
                                                                          int64_t depth, float* m, int64_t ldm,
                                                                          int64_t columns, bool accumulate) {
  __m512 acc[Rows][4];
  for (int r = 0; r < Rows; ++r) {
    for (int j = 0; j < 4; ++j) acc[r][j] = _mm512_setzero_ps();
  }
  for (int64_t i = 0; i < depth; ++i, b += kPackedColumns) {
    const __m512 b0 = _mm512_loadu_ps(b), b1 = _mm512_loadu_ps(b + 16), b2 = _mm512_loadu_ps(b + 32),
                 b3 = _mm512_loadu_ps(b + 48);
    for (int r = 0; r < Rows; ++r) {
      const __m512 value = _mm512_set1_ps(u[r * ldu + i]);
      acc[r][0] = _mm512_fmadd_ps(value, b0, acc[r][0]);
      acc[r][1] = _mm512_fmadd_ps(value, b1, acc[r][1]);
      acc[r][2] = _mm512_fmadd_ps(value, b2, acc[r][2]);
      acc[r][3] = _mm512_fmadd_ps(value, b3, acc[r][3]);
    }
  }
  for (int j = 0; j < 4; ++j) {
    const int64_t left = std::clamp<int64_t>(columns - 16 * j, 0, 16);
    const __mmask16 mask = __mmask16((1u << left) - 1);
    for (int r = 0; r < Rows; ++r) {
      float* out = m + r * ldm + 16 * j;
      const __m512 sum = accumulate ? _mm512_add_ps(_mm512_maskz_loadu_ps(mask, out), acc[r][j]) : acc[r][j];
      _mm512_mask_storeu_ps(out, mask, sum);
    }
  }
}

// block_product over `rows` rows, kRows at a time, then the rest.
UNET_FAST_AVX512 void rows_product(const float* u, int64_t rows, int64_t ldu, const float* b, int64_t depth, float* m,
                                   int64_t ldm, int64_t columns, bool accumulate) {
  int64_t r = 0;
  for (; r + kRows <= rows; r += kRows) {
    block_product<kRows>(u + r * ldu, ldu, b, depth, m + r * ldm, ldm, columns, accumulate);
  }
  u += r * ldu;
  m += r * ldm;
  switch (rows - r) {
    case 5: return block_product<5>(u, ldu, b, depth, m, ldm, columns, accumulate);
    case 4: return block_product<4>(u, ldu, b, depth, m, ldm, columns, accumulate);
    case 3: return block_product<3>(u, ldu, b, depth, m, ldm, columns, accumulate);
    case 2: return block_product<2>(u, ldu, b, depth, m, ldm, columns, accumulate);
    case 1: return block_product<1>(u, ldu, b, depth, m, ldm, columns, accumulate);
    default: return;
  }
}

UNET_FAST_AVX512 void products(const float* u, int64_t u_point_stride, int64_t points, int64_t rows, int64_t k,
                               const float* packed, int64_t n, float* m, int64_t m_point_stride) {
  const int64_t blocks = (n + kPackedColumns - 1) / kPackedColumns;
  for (int64_t p = 0; p < points; ++p) {
    for (int64_t block = 0; block < blocks; ++block) {
      const float* b = packed + (p * blocks + block) * k * kPackedColumns;
      const int64_t column = block * kPackedColumns, columns = std::min(kPackedColumns, n - column);
      for (int64_t first = 0; first < k; first += kDepth) {
        rows_product(u + p * u_point_stride + first, rows, k, b + first * kPackedColumns, std::min(kDepth, k - first),
                     m + p * m_point_stride + column, n, columns, /*accumulate=*/first > 0);
      }
    }
  }
}

#endif

}  // namespace

bool point_products_available() {
#ifdef UNET_FAST_AVX512
  return cpu_has_avx512();
#else
  return false;
#endif
}

void point_products(const float* u, int64_t u_point_stride, int64_t points, int64_t rows, int64_t k,
                    const float* packed, int64_t n, float* m, int64_t m_point_stride) {
  TORCH_CHECK(point_products_available(), "point_products: this CPU has no AVX-512");
#ifdef UNET_FAST_AVX512
  products(u, u_point_stride, points, rows, k, packed, n, m, m_point_stride);
#endif
}

}  // namespace unet_fast
