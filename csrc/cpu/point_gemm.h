// The Winograd passes' transform-domain products by a GEMM micro-kernel of our own
// (csrc/cpu/point_gemm.cpp): no packing of either operand at each call (the weights are
// transformed straight into the kernel's layout) and no per-call overhead, so that a thread's
// piece of tiles can be small enough for its transformed tiles and products to stay in the
// core's L2 cache between the transforms.
#pragma once

#include <cstdint>

namespace unet_fast {

// Output columns a block of the packed weights holds: per point, ceil(N / 64) blocks, each K
// rows of 64 floats (zero past N), the blocks and then the points one after the other.
constexpr int64_t kPackedColumns = 64;

// Whether point_products runs on this CPU (it needs AVX-512; elsewhere the caller uses ATen).
bool point_products_available();

// m[p] = u[p] @ weights[p] for `points` points, in float32: u[p] is rows x k at
// u + p * u_point_stride (row stride k), m[p] rows x n at m + p * m_point_stride (row stride
// n), the weights packed as above from `packed`. Each product sums its k terms in order, in
// parts of 128 added up.
void point_products(const float* u, int64_t u_point_stride, int64_t points, int64_t rows, int64_t k,
                    const float* packed, int64_t n, float* m, int64_t m_point_stride);

}  // namespace unet_fast
