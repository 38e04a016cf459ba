// The Winograd passes' transform-domain products by a GEMM micro-kernel of our own
// (csrc/cpu/point_gemm.cpp): no packing of either operand at each call (the weights are
// transformed straight into the kernel's layout) and no per-call overhead, so that a thread's
// piece of tiles can be small enough for its transformed tiles and products to stay in the
// core's L2 cache between the transforms.
#pragma once

#include <cstdint>

namespace unet_fast {

// Output columns a block of the packed weights holds, the kernel's step: 64 with AVX-512, 16
// with AVX2 (0 where no kernel runs). Per point, ceil(N / columns) blocks, each K rows of
// `columns` floats (zero past N), the blocks and then the points one after the other: each step
// reads its weights from one contiguous block.
int64_t point_products_columns();

// The largest transformed weights of a Winograd pass (all points) that point_products multiplies
// by: larger ones no core's cache holds, and ATen's GEMM multiplies by them point by point
// (csrc/cpu/winograd.cpp). The tuner reads it to know where the two GEMMs differ.
constexpr int64_t kPointProductsMaxWeightBytes = 8 << 20;

// The kernel point_products runs here, "avx512" or "avx2" (with FMA), or nullptr where it does
// not run and the caller uses ATen's GEMM: on other CPUs, or with UNET_FAST_POINT_GEMM=0. With
// UNET_FAST_POINT_GEMM=avx2 a CPU with AVX-512 runs the AVX2 kernel (tests). Read once; another
// value raises an error naming the variable.
const char* point_products_kernel();

// m[p] = u[p] @ weights[p] for `points` points, in float32: u[p] is rows x k at
// u + p * u_point_stride (row stride k), m[p] rows x n at m + p * m_point_stride (row stride
// n), the weights packed as above from `packed`. Each product sums its k terms in order, in
// parts of 128 added up.
void point_products(const float* u, int64_t u_point_stride, int64_t points, int64_t rows, int64_t k,
                    const float* packed, int64_t n, float* m, int64_t m_point_stride);

}  // namespace unet_fast
