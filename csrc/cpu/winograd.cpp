// Winograd's minimal filtering F(m x m, 3x3) (Lavin & Gray, 2016) for the valid 3x3 convolution,
// m = 2, 4 or 6: each m x m block of output pixels comes from an (m + 2) x (m + 2) input tile as
//   Y = A^T [ sum_ci (G g G^T) . (B^T d B) ] A,
// so (m + 2)^2 multiplications per channel pair and block replace direct convolution's 9 m^2
// (F(4x4, 3x3): 36 for 144). The input transform reads the channels_last input directly
// (tiles past the edge read zeros), the transform-domain products are GEMMs (in float32 where
// the transformed weights fit in cache and the CPU has AVX-512 or AVX2, our own micro-kernel,
// point_gemm.cpp, on weights transformed into its layout; else ATen's, so MKL/oneDNN), and the
// output transform adds the bias, applies the ReLU and writes only the pixels inside the
// output. Each thread works through pieces of tiles whose buffers stay within kBudgetBytes
// (kBf16BudgetBytes in bf16; kOwnProductsBudgetBytes with our kernel), handed out one at a time.
#include "winograd.h"

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>

#include "convert.h"
#include "dynamic_parallel.h"
#include "point_gemm.h"
#include "target_clones.h"

namespace unet_fast {
namespace {

// Transform buffers of one thread's piece of tiles (bf16's AMX GEMMs gain from more tiles a
// piece); a weight gradient's chunk of tiles has those of all threads.
constexpr int64_t kBudgetBytes = 8 << 20;
constexpr int64_t kBf16BudgetBytes = 16 << 20;
constexpr int64_t kMinPieceTiles = 32;
// Rows of filters whose taps a weight transform gathers at a time where a row's columns are not
// side by side: 16 floats, a cache line, where its rows are.
constexpr int64_t kGatherRows = 16;
// With point_products, whose calls cost nothing, pieces small enough for a core's L2 cache.
constexpr int64_t kOwnProductsBudgetBytes = 1 << 20;
// The transformed tiles and products of all threads' chunk where the weights are larger (up to
// 1.5x this where that saves a chunk: evened_chunk).
constexpr int64_t kByPointBudgetBytes = 32 << 20;
// The transformed weights of a forward or data gradient, and a weight gradient's
// transform-domain sums, are made a slice of output channels at a time within about these
// (channels_a_slice): the wide layers' are larger than the weights (F(6x6), 1024 -> 1024:
// 256 MiB against 36), and at 572 they set a training step's peak memory. Slices cost time:
// forward and data gradient of 1024 -> 1024 at 28 by F(4x4), 87-92 ms whole, 97-130 in slices
// within 64 MiB, 106-150 within 32 (three alternating runs, AVX-512); F(2x2), whose weights
// fit, 102-115 ms.
constexpr int64_t kWeightsBudgetBytes = 64 << 20;
constexpr int64_t kSumsBudgetBytes = 32 << 20;
// The matrices of F(m x m, 3x3): B^T (tile x tile), G (tile x 3) and A^T (m x tile), for the
// interpolation points 0, +-1 (m = 2), then +-2 (m = 4), then +-1/2 (m = 6), and infinity.
template <int M>
struct Minimal;

template <>
struct Minimal<2> {
  static constexpr int kOut = 2, kTile = 4;
  static constexpr double BT[kTile][kTile] = {{1, 0, -1, 0}, {0, 1, 1, 0}, {0, -1, 1, 0}, {0, 1, 0, -1}};
  static constexpr double G[kTile][3] = {{1, 0, 0}, {0.5, 0.5, 0.5}, {0.5, -0.5, 0.5}, {0, 0, 1}};
  static constexpr double AT[kOut][kTile] = {{1, 1, 1, 0}, {0, 1, -1, -1}};
};

template <>
struct Minimal<4> {
  static constexpr int kOut = 4, kTile = 6;
  static constexpr double BT[kTile][kTile] = {{4, 0, -5, 0, 1, 0},  {0, -4, -4, 1, 1, 0}, {0, 4, -4, -1, 1, 0},
                                              {0, -2, -1, 2, 1, 0}, {0, 2, -1, -2, 1, 0}, {0, 4, 0, -5, 0, 1}};
  static constexpr double G[kTile][3] = {{1.0 / 4, 0, 0},
                                         {-1.0 / 6, -1.0 / 6, -1.0 / 6},
                                         {-1.0 / 6, 1.0 / 6, -1.0 / 6},
                                         {1.0 / 24, 1.0 / 12, 1.0 / 6},
                                         {1.0 / 24, -1.0 / 12, 1.0 / 6},
                                         {0, 0, 1}};
  static constexpr double AT[kOut][kTile] = {
      {1, 1, 1, 1, 1, 0}, {0, 1, -1, 2, -2, 0}, {0, 1, 1, 4, 4, 0}, {0, 1, -1, 8, -8, 1}};
};

template <>
struct Minimal<6> {
  static constexpr int kOut = 6, kTile = 8;
  static constexpr double BT[kTile][kTile] = {{1, 0, -5.25, 0, 5.25, 0, -1, 0},
                                              {0, 1, 1, -4.25, -4.25, 1, 1, 0},
                                              {0, -1, 1, 4.25, -4.25, -1, 1, 0},
                                              {0, 0.5, 0.25, -2.5, -1.25, 2, 1, 0},
                                              {0, -0.5, 0.25, 2.5, -1.25, -2, 1, 0},
                                              {0, 2, 4, -2.5, -5, 0.5, 1, 0},
                                              {0, -2, 4, 2.5, -5, -0.5, 1, 0},
                                              {0, -1, 0, 5.25, 0, -5.25, 0, 1}};
  static constexpr double G[kTile][3] = {{1, 0, 0},
                                         {-2.0 / 9, -2.0 / 9, -2.0 / 9},
                                         {-2.0 / 9, 2.0 / 9, -2.0 / 9},
                                         {1.0 / 90, 1.0 / 45, 2.0 / 45},
                                         {1.0 / 90, -1.0 / 45, 2.0 / 45},
                                         {32.0 / 45, 16.0 / 45, 8.0 / 45},
                                         {32.0 / 45, -16.0 / 45, 8.0 / 45},
                                         {0, 0, 1}};
  static constexpr double AT[kOut][kTile] = {{1, 1, 1, 1, 1, 1, 1, 0},
                                             {0, 1, -1, 2, -2, 0.5, -0.5, 0},
                                             {0, 1, 1, 4, 4, 0.25, 0.25, 0},
                                             {0, 1, -1, 8, -8, 0.125, -0.125, 0},
                                             {0, 1, 1, 16, 16, 0.0625, 0.0625, 0},
                                             {0, 1, -1, 32, -32, 0.03125, -0.03125, 1}};
};

// The type a transform computes in: float for bf16, whose values are stored in bf16 only
// between the passes (the transformed tiles and weights, the GEMM's products).
template <typename T>
using Acc = at::opmath_type<T>;

// t's tensor options with the type Acc of its own: for the bias and the weight gradient's sums.
at::TensorOptions acc_options(const at::Tensor& t) {
  return t.options().dtype(at::toOpMathType(t.scalar_type()));
}

// out[i][c] = finish(i, c, sum_j coef(i, j) in[j][c]) for i < Rows, j < Cols, over the channels,
// computed in Acc<In>. coef is known at compile time once inlined and unrolled, so zero terms
// vanish and the loop is built for the target of the function that calls it.
template <int Rows, int Cols, typename In, typename Out, typename Coef, typename Finish>
__attribute__((always_inline)) inline void combine(Coef coef, const In* const* in, Out* const* out, int64_t channels,
                                                   Finish finish) {
  using A = Acc<In>;
  const In* v[Cols];
  Out* o[Rows];
  for (int j = 0; j < Cols; ++j) v[j] = in[j];
  for (int i = 0; i < Rows; ++i) o[i] = out[i];
#pragma omp simd
  for (int64_t c = 0; c < channels; ++c) {
    A x[Cols];
#pragma GCC unroll 8
    for (int j = 0; j < Cols; ++j) x[j] = load_value(v[j] + c);
#pragma GCC unroll 8
    for (int i = 0; i < Rows; ++i) {
      A sum = A(0);
      bool first = true;  // starts from the first term, not from 0 (0 + -0 is +0)
#pragma GCC unroll 8
      for (int j = 0; j < Cols; ++j) {
        const double k = coef(i, j);
        if (k == 0) continue;
        const A term = k == 1 ? x[j] : k == -1 ? -x[j] : A(k) * x[j];
        sum = first ? term : sum + term;
        first = false;
      }
      store_value(o[i] + c, finish(i, c, sum));
    }
  }
}

template <int Rows, int Cols, typename In, typename Out, typename Coef>
__attribute__((always_inline)) inline void combine(Coef coef, const In* const* in, Out* const* out, int64_t channels) {
  combine<Rows, Cols>(coef, in, out, channels, [](int, int64_t, Acc<In> value) { return value; });
}

// wt[(a, b) * point_stride + o * C + c] = (G g G^T)[a][b] for the 3x3 filter g of output
// channel o and input channel c, turned by 180 degrees if `turned`; taps[k] points at the C
// input channels of tap k = 3 i + j of output channel o (channels_last weights).
template <class W, typename T, typename G>
UNET_FAST_CPU_CLONES void transform_filters(const T* const* taps, int64_t channels, bool turned, Acc<T>* scratch,
                                            G* wt, int64_t point_stride) {
  const auto g = [](int a, int i) { return W::G[a][i]; };
  for (int j = 0; j < 3; ++j) {  // scratch[a][j] = (G g)[a][j]
    const T* column[3] = {taps[turned ? 8 - j : j], taps[turned ? 5 - j : 3 + j], taps[turned ? 2 - j : 6 + j]};
    Acc<T>* out[W::kTile];
    for (int a = 0; a < W::kTile; ++a) out[a] = scratch + (a * 3 + j) * channels;
    combine<W::kTile, 3>(g, column, out, channels);
  }
  for (int a = 0; a < W::kTile; ++a) {  // wt[a][b] = (G g G^T)[a][b]
    const Acc<T>* row[3] = {scratch + a * 3 * channels, scratch + (a * 3 + 1) * channels,
                            scratch + (a * 3 + 2) * channels};
    G* out[W::kTile];
    for (int b = 0; b < W::kTile; ++b) out[b] = wt + (a * W::kTile + b) * point_stride;
    combine<W::kTile, 3>(g, row, out, channels);
  }
}

// The adjoint: taps[k][c] = (G^T d G)[i][j] for the points d[(a, b)] = du[(a, b) * point_stride
// + c], k = 3 i + j.
template <class W, typename T>
UNET_FAST_CPU_CLONES void untransform_filters(const Acc<T>* du, int64_t point_stride, int64_t channels,
                                              Acc<T>* scratch, T* const* taps) {
  const auto g_transposed = [](int i, int a) { return W::G[a][i]; };
  for (int b = 0; b < W::kTile; ++b) {  // scratch[i][b] = (G^T d)[i][b]
    const Acc<T>* column[W::kTile];
    for (int a = 0; a < W::kTile; ++a) column[a] = du + (a * W::kTile + b) * point_stride;
    Acc<T>* out[3] = {scratch + b * channels, scratch + (W::kTile + b) * channels,
                      scratch + (2 * W::kTile + b) * channels};
    combine<3, W::kTile>(g_transposed, column, out, channels);
  }
  for (int i = 0; i < 3; ++i) {  // taps[i][j] = (G^T d G)[i][j]
    const Acc<T>* row[W::kTile];
    for (int b = 0; b < W::kTile; ++b) row[b] = scratch + (i * W::kTile + b) * channels;
    combine<3, W::kTile>(g_transposed, row, taps + 3 * i, channels);
  }
}

// fn(T{}, G{}) for the storage type T of a tensor of `dtype` and the GEMM type G: T itself, or
// float for bf16 with `float_gemm`.
template <typename Fn>
void with_types(at::ScalarType dtype, bool float_gemm, const char* name, Fn&& fn) {
  if (float_gemm) {
    TORCH_CHECK(dtype == at::kBFloat16, name, ": GEMMs in float are for bf16 tensors, got ", dtype);
    fn(c10::BFloat16{}, float{});
    return;
  }
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, dtype, "winograd_conv3x3", [&] { fn(scalar_t{}, scalar_t{}); });
}

// The points G g G^T of every filter of a (rows, columns, 3, 3) weight, g turned by 180 degrees
// if `turned`, as (points, blocks, rows, width): the columns in blocks of `width` (the last one
// zero-padded), each block's rows one after the other. With one block (width = columns) that is
// (points, rows, columns): the forward's right GEMM operand, transposed, for rows = C_out, and
// with the filters turned the data gradient's as it is (a convolution from C_out to C_in
// channels); in blocks of point_products_columns(), point_products' layout. In the weight's dtype, or in
// float for GEMMs in float (from a bf16 or a float32 weight).
// Each filter's taps are read where they lie: where a row's columns are not side by side (the
// forward's filters taken (C_in, C_out) from channels_last weights), a block's are gathered
// first, which costs less than a transposed copy of the weights and holds no more memory.
template <class W>
at::Tensor transform_weight(const at::Tensor& weight, bool turned, bool float_gemm, int64_t width) {
  constexpr int kPoints = W::kTile * W::kTile;
  const bool adjacent = weight.stride(1) == 1;
  const int64_t rows = weight.size(0), columns = weight.size(1), blocks = (columns + width - 1) / width;
  const auto options = weight.options().dtype(float_gemm ? at::kFloat : weight.scalar_type());
  at::Tensor wt = blocks * width == columns ? at::empty({kPoints, blocks, rows, width}, options)
                                            : at::zeros({kPoints, blocks, rows, width}, options);
  const bool from_bf16 = float_gemm && weight.scalar_type() != at::kFloat;
  with_types(weight.scalar_type(), from_bf16, "winograd_transform_weight", [&](auto storage, auto gemm) {
    using scalar_t = decltype(storage);
    using G = decltype(gemm);
    const scalar_t* g = weight.const_data_ptr<scalar_t>();
    G* out = wt.mutable_data_ptr<G>();
    const int64_t row_stride = weight.stride(0), column_stride = weight.stride(1);
    const auto tap_offset = [&](int k) { return k / 3 * weight.stride(2) + k % 3 * weight.stride(3); };
    parallel_pieces(0, rows, 1, [&](int64_t begin, int64_t end) {
      const int64_t most = std::min(width, columns);
      std::vector<Acc<scalar_t>> scratch(W::kTile * 3 * most);
      // the taps of kGatherRows rows of a block: [row][tap][column]
      std::vector<scalar_t> gathered(adjacent ? 0 : kGatherRows * 9 * most);
      const scalar_t* taps[9];
      for (int64_t block = 0; block < blocks; ++block) {
        const int64_t first = block * width, count = std::min(width, columns - first);
        const auto transform_row = [&](int64_t o) {
          transform_filters<W, scalar_t, G>(taps, count, turned, scratch.data(), out + (block * rows + o) * width,
                                            blocks * rows * width);
        };
        for (int64_t o = begin; o < end; o += adjacent ? 1 : kGatherRows) {
          if (adjacent) {
            for (int k = 0; k < 9; ++k) taps[k] = g + o * row_stride + first + tap_offset(k);
            transform_row(o);
            continue;
          }
          // where the rows lie side by side, each (column, tap) reads one cache line
          const int64_t chunk = std::min(kGatherRows, end - o);
          for (int64_t c = 0; c < count; ++c) {
            for (int k = 0; k < 9; ++k) {
              const scalar_t* tap = g + o * row_stride + (first + c) * column_stride + tap_offset(k);
              for (int64_t r = 0; r < chunk; ++r) gathered[(r * 9 + k) * most + c] = tap[r * row_stride];
            }
          }
          for (int64_t r = 0; r < chunk; ++r) {
            for (int k = 0; k < 9; ++k) taps[k] = gathered.data() + (r * 9 + k) * most;
            transform_row(o + r);
          }
        }
      }
    });
  });
  return wt;
}

// The transformed weights of a slice of output channels in the layout of the GEMM that
// multiplies by them: ATen's (points, K, N) operand (`matrices`, any strides), or, for float
// GEMMs on a CPU with AVX-512 or AVX2 where they fit in cache, point_products' blocks (`packed`).
// `large`: more than kPointProductsMaxWeightBytes, so no core's cache holds them.
struct PointWeights {
  at::Tensor matrices, packed;
  int64_t k, n;
  bool large;
  // m[p] = u[p] @ weights[p] for the points first .. first + count of u (points, rows, K) and m
  // (points, rows, N), both point-major and contiguous.
  template <typename G>
  void multiply(const at::Tensor& u, at::Tensor& m, int64_t first, int64_t count) const {
    if constexpr (std::is_same_v<G, float>) {
      if (packed.defined()) {
        // named for the profiler, with u and m's shapes (tools/profile_stages.py counts its GEMMs)
        RECORD_FUNCTION("unet_fast::point_products", std::vector<c10::IValue>({u, m}));
        const int64_t rows = u.size(1), per_point = packed.size(1) * k * packed.size(3);
        point_products(u.const_data_ptr<float>() + first * rows * k, rows * k, count, rows, k,
                       packed.const_data_ptr<float>() + first * per_point, n,
                       m.mutable_data_ptr<float>() + first * rows * n, rows * n);
        return;
      }
    }
    // named for the profiler: ATen's GEMMs in here run on one core (tools/profile_stages.py)
    RECORD_FUNCTION("unet_fast::point_gemms", std::vector<c10::IValue>());
    if (count == 1) {
      at::Tensor products = m[first];
      at::mm_out(products, u[first], matrices[first]);
    } else {
      at::Tensor products = m.narrow(0, first, count);  // in a parallel region ATen runs it serially
      at::bmm_out(products, u.narrow(0, first, count), matrices.narrow(0, first, count));
    }
  }
};

// Whether float GEMMs of transformed weights that fit in cache run by point_products here
// (unless the caller asks for ATen's: `aten_gemm`).
bool own_products(at::ScalarType gemm_type, bool aten_gemm) {
  return gemm_type == at::kFloat && !aten_gemm && point_products_kernel() != nullptr;
}

// The transformed weights of output channels first .. first + count of `weight`, dim `out_dim`
// of which is the output channels (0 for the forward; 1 for the data gradient, whose filters
// are turned).
// Large ones stay ATen's: there the products are GEMMs of hundreds of channels a side, on
// which ATen's GEMM does as well, and the forward's packed layout, whose output channels are
// the innermost, would have to be gathered across the channels_last weights.
template <class W>
PointWeights point_weights(const at::Tensor& weight, int64_t out_dim, int64_t first, int64_t count, bool float_gemm,
                           bool aten_gemm) {
  constexpr int kPoints = W::kTile * W::kTile;
  const at::Tensor part = weight.narrow(out_dim, first, count);
  const int64_t k = part.size(1 - out_dim), n = count;
  const bool turned = out_dim == 1;
  const auto gemm_type = float_gemm ? at::kFloat : weight.scalar_type();
  const bool large = kPoints * k * n * int64_t(c10::elementSize(gemm_type)) > kPointProductsMaxWeightBytes;
  if (!large && own_products(gemm_type, aten_gemm)) {
    // rows K, columns N: the forward's filters taken (C_in, C_out)
    const at::Tensor by_rows = turned ? part : part.transpose(0, 1);
    return {{}, transform_weight<W>(by_rows, turned, float_gemm, point_products_columns()), k, n, large};
  }
  // (points, C_out, C_in): for the forward the transpose of its operand, for the data gradient the operand
  const at::Tensor wt =
      transform_weight<W>(part, turned, float_gemm, part.size(1)).view({kPoints, part.size(0), part.size(1)});
  return {turned ? wt : wt.transpose(1, 2), {}, k, n, large};
}

// U[point][t][c] = (B^T d B)[point] for the input tile whose pixels' channel vectors start at
// rows[tile * a + b]; U's points lie point_stride apart, in the GEMM's type G. `scratch` holds
// points x C values.
template <class W, typename T, typename G>
UNET_FAST_CPU_CLONES void input_transform(const T* const* rows, int64_t channels, Acc<T>* scratch, G* u,
                                          int64_t point_stride) {
  constexpr int kTile = W::kTile;
  const auto bt = [](int i, int j) { return W::BT[i][j]; };
  for (int b = 0; b < kTile; ++b) {  // columns: scratch[a][b] = (B^T d)[a][b]
    const T* column[kTile];
    Acc<T>* out[kTile];
    for (int a = 0; a < kTile; ++a) {
      column[a] = rows[a * kTile + b];
      out[a] = scratch + (a * kTile + b) * channels;
    }
    combine<kTile, kTile>(bt, column, out, channels);
  }
  for (int a = 0; a < kTile; ++a) {  // rows: U[a][b] = (scratch B)[a][b]
    const Acc<T>* row[kTile];
    G* out[kTile];
    for (int b = 0; b < kTile; ++b) {
      row[b] = scratch + (a * kTile + b) * channels;
      out[b] = u + (a * kTile + b) * point_stride;
    }
    combine<kTile, kTile>(bt, row, out, channels);
  }
}

// The m x m output block A^T M A + bias (then the ReLU) of one tile: M[point] at m + point *
// point_stride; output row p goes to out_rows[p] (columns q at out_rows[p] + q * pixel_stride),
// of which only the first `columns` are written; M is in the GEMM's type G, the output in T.
// With relu_rows (a ReLU's output, laid out as the output with relu_pixel_stride), each value is
// zero where that is <= 0 instead (the ReLU's backward; relu is then false). `scratch` holds
// tile x m x C values.
template <class W, typename T, typename G>
UNET_FAST_CPU_CLONES void output_transform(const G* m, int64_t point_stride, int64_t channels, const Acc<T>* bias,
                                           bool relu, const T* const* relu_rows, int64_t relu_pixel_stride,
                                           Acc<T>* scratch, T* const* out_rows, int64_t pixel_stride, int columns) {
  constexpr int kTile = W::kTile, kOut = W::kOut;
  using A = Acc<T>;
  const auto at = [](int q, int b) { return W::AT[q][b]; };
  for (int a = 0; a < kTile; ++a) {  // rows: s[a][q] = (M A)[a][q]
    const G* row[kTile];
    A* out[kOut];
    for (int b = 0; b < kTile; ++b) row[b] = m + (a * kTile + b) * point_stride;
    for (int q = 0; q < kOut; ++q) out[q] = scratch + (a * kOut + q) * channels;
    combine<kOut, kTile>(at, row, out, channels);
  }
  const auto add_bias = [bias](int, int64_t c, A value) { return value + bias[c]; };
  const auto add_bias_relu = [bias](int, int64_t c, A value) {
    value += bias[c];
    return value < A(0) ? A(0) : value;  // keeps NaN, as torch.relu does
  };
  for (int q = 0; q < columns; ++q) {  // columns: Y[p][q] = (A^T s)[p][q]
    const A* column[kTile];
    T* out[kOut];
    for (int a = 0; a < kTile; ++a) column[a] = scratch + (a * kOut + q) * channels;
    for (int p = 0; p < kOut; ++p) out[p] = out_rows[p] + q * pixel_stride;
    if (relu_rows) {
      const T* relu_column[kOut];
      for (int p = 0; p < kOut; ++p) relu_column[p] = relu_rows[p] + q * relu_pixel_stride;
      // Zero where the ReLU's output is <= 0; a NaN output passes the gradient on. Both sides computed, and
      // the test as a NaN check and an ordered compare: a select the loop vectorizes (GCC keeps `r <= 0 ? 0 :
      // ...` scalar, its negation unordered, and would not load bias[c] for one side only).
      const auto through_relu_backward = [bias, relu_column](int p, int64_t c, A value) {
        const A passed = value + bias[c], r = load_value(relu_column[p] + c);
        return r > A(0) || r != r ? passed : A(0);
      };
      combine<kOut, kTile>(at, column, out, channels, through_relu_backward);
    } else if (relu) {
      combine<kOut, kTile>(at, column, out, channels, add_bias_relu);
    } else {
      combine<kOut, kTile>(at, column, out, channels, add_bias);
    }
  }
}

// The transform A dY A^T of one m x m block of output gradient, the adjoint of the output
// transform: dY's row p starts at rows[p] (columns q at rows[p] + q * pixel_stride), rows below
// the output at a row of zeros, rows[m]; only the first `columns` columns are read. Points lie
// point_stride apart in dm, in the GEMM's type G; `scratch` holds tile x m x C values.
template <class W, typename T, typename G>
UNET_FAST_CPU_CLONES void grad_transform(const T* const* rows, int columns, int64_t channels, int64_t pixel_stride,
                                         Acc<T>* scratch, G* dm, int64_t point_stride) {
  constexpr int kTile = W::kTile, kOut = W::kOut;
  const auto a_matrix = [](int a, int p) { return W::AT[p][a]; };
  for (int q = 0; q < kOut; ++q) {  // columns: s[a][q] = (A dY)[a][q]
    const T* column[kOut];
    Acc<T>* out[kTile];
    for (int p = 0; p < kOut; ++p) column[p] = q < columns ? rows[p] + q * pixel_stride : rows[kOut];
    for (int a = 0; a < kTile; ++a) out[a] = scratch + (a * kOut + q) * channels;
    combine<kTile, kOut>(a_matrix, column, out, channels);
  }
  for (int a = 0; a < kTile; ++a) {  // rows: dM[a][b] = (s A^T)[a][b]
    const Acc<T>* row[kOut];
    G* out[kTile];
    for (int q = 0; q < kOut; ++q) row[q] = scratch + (a * kOut + q) * channels;
    for (int b = 0; b < kTile; ++b) out[b] = dm + (a * kTile + b) * point_stride;
    combine<kTile, kOut>(a_matrix, row, out, channels);
  }
}

// What a chunk of `count` (tiles, or output channels) takes where a chunk holds at most `most`
// (taken as at least 1, at most `count`): the chunks evened out, and one fewer where the last
// would be at most half full (the others then hold up to 1.5x `most`). Each chunk of tiles reads
// all the transformed weights (or adds to all the weight gradient's sums) again, which a last
// chunk of a few tiles paid for little work: 512 -> 512 at 64 by F(4x4) went in chunks of 227 and
// 29 tiles, now one of 256 (1.08x faster alone; the U-Net's 572 forward 1.05x). Each slice of
// output channels transforms the input tiles again and multiplies by fewer columns: 1024 -> 1024
// by F(4x4) went in three slices, now two (the 572 forward 1.03-1.05x).
int64_t evened_chunk(int64_t most, int64_t count) {
  most = std::clamp<int64_t>(most, 1, count);
  int64_t chunks = (count + most - 1) / most;
  if (chunks > 1 && 2 * (count - (chunks - 1) * most) <= most) --chunks;
  return (count + chunks - 1) / chunks;
}

// Image, first output row and first output column of a tile's output block.
struct TilePosition {
  int64_t image, y, x;
};

// The m x m output blocks of a convolution with an out_h x out_w output, over the batch.
struct TileGrid {
  int64_t block, images, out_h, out_w, tiles_y, tiles_x;
  TileGrid(int64_t block, int64_t images, int64_t out_h, int64_t out_w)
      : block(block), images(images), out_h(out_h), out_w(out_w), tiles_y((out_h + block - 1) / block),
        tiles_x((out_w + block - 1) / block) {}
  int64_t tiles() const { return images * tiles_y * tiles_x; }
  // Image, first output row and column of tile number `tile`.
  TilePosition position(int64_t tile) const {
    const int64_t per_image = tiles_y * tiles_x, within = tile % per_image;
    return {tile / per_image, within / tiles_x * block, within % tiles_x * block};
  }
  // Tiles per chunk such that the chunk's transform buffers of c_in + c_out channels stay in
  // the budget of all threads together (evened_chunk: up to 1.5x it).
  int64_t chunk(int64_t points, int64_t channels, int64_t element_size) const {
    const int64_t budget = (element_size == 2 ? kBf16BudgetBytes : kBudgetBytes) * at::get_num_threads();
    return evened_chunk(budget / (points * channels * element_size), tiles());
  }
  // Tiles per piece of work: a thread's transform buffers of c_in + c_out channels within the
  // budget, and at least two pieces a thread where there are tiles enough (a thread slowed by
  // another process can then leave work to the others), but about kMinPieceTiles at least: the
  // GEMMs of fewer rows are slow and sum less accurately (F(6x6) 1024 -> 1024 on 5 tiles a
  // piece: norm-wise error 1.2e-5 against 8.7e-6). The pieces, if more than one, are a multiple
  // of the threads, evened out: 49 tiles in pieces of 32 gave one thread 32, the other 17.
  int64_t piece(int64_t points, int64_t channels, int64_t element_size, int64_t budget) const {
    const int64_t threads = at::get_num_threads();
    const int64_t balanced = (tiles() + 2 * threads - 1) / (2 * threads);
    const int64_t wanted = std::max(std::min(budget / (points * channels * element_size), balanced), kMinPieceTiles);
    int64_t pieces = (tiles() + wanted - 1) / wanted;
    if (pieces > 1) pieces = (pieces + threads - 1) / threads * threads;
    return (tiles() + pieces - 1) / pieces;
  }
};

// What the output transform makes of each value before it stores it: adds `bias` (in Acc<T>, one
// per output channel), then the ReLU if `relu`. A data gradient's may instead go through the
// backward of the ReLU whose output is `relu_output` (channels innermost, the output's shape):
// zero where that is <= 0, as torch's threshold_backward. Applied as the values are stored, it
// adds ~3 ms to a data gradient of 64 x 570 x 570 by F(4x4) (~44 ms), where a pass over the
// gradient after it took 7.
struct OutputFinish {
  at::Tensor bias;
  bool relu = false;
  at::Tensor relu_output;

  // The finish of output channels first .. first + count.
  OutputFinish channels(int64_t first, int64_t count) const {
    return {bias.narrow(0, first, count), relu,
            relu_output.defined() ? relu_output.narrow(1, first, count) : relu_output};
  }
};

// x itself where each pixel's channels lie next to each other (channels_last, or a window of
// such a tensor: the decoder's crop of a skip connection), else a channels_last copy.
at::Tensor with_channels_innermost(const at::Tensor& x) {
  return x.stride(1) == 1 ? x : x.contiguous(at::MemoryFormat::ChannelsLast);
}

// Buffers a thread keeps across its pieces of work: transform scratch and a row of zeros.
template <typename T>
struct TileScratch {
  std::vector<Acc<T>> values;
  std::vector<T> zeros;
  TileScratch(int64_t values_count, int64_t zeros_count) : values(values_count), zeros(zeros_count, T(0)) {}
};

// The channels of all sources together: the input is their join along the channels.
int64_t joined_channels(at::TensorList sources) {
  int64_t channels = 0;
  for (const at::Tensor& source : sources) channels += source.size(1);
  return channels;
}

// u[point][t][c] = (B^T d B) for tiles first .. first + count of the input: the join along the
// channels of `sources` (channels innermost, of one batch, height and width; the crop-and-
// concatenate's upsampled tensor and skip window, read where they lie), zero-padded by `pad`;
// d is the tile's window of the input, starting `pad` before its output block. Points lie
// point_stride apart in u (count x channels where u holds just these tiles).
template <class W, typename T, typename G>
void transform_input_tiles(at::TensorList sources, int64_t pad, const TileGrid& grid, int64_t first, int64_t count,
                           G* u, TileScratch<T>& scratch, int64_t point_stride) {
  constexpr int kTile = W::kTile, kPoints = kTile * kTile;
  const int64_t channels = joined_channels(sources), height = sources[0].size(2), width = sources[0].size(3);
  const T* rows[kPoints];
  for (int64_t t = 0; t < count; ++t) {
    const TilePosition pos = grid.position(first + t);
    int64_t offset = 0;  // of this source's channels in the join
    for (const at::Tensor& x : sources) {
      const int64_t image_stride = x.stride(0), row_stride = x.stride(2), pixel_stride = x.stride(3);
      const T* input = x.const_data_ptr<T>();
      for (int a = 0; a < kTile; ++a) {
        for (int b = 0; b < kTile; ++b) {
          const int64_t y = pos.y + a - pad, x = pos.x + b - pad;
          const bool inside = y >= 0 && y < height && x >= 0 && x < width;
          rows[a * kTile + b] =
              inside ? input + pos.image * image_stride + y * row_stride + x * pixel_stride : scratch.zeros.data();
        }
      }
      input_transform<W, T, G>(rows, x.size(1), scratch.values.data(), u + t * channels + offset, point_stride);
      offset += x.size(1);
    }
  }
}

// The first points x count x channels values of a transform buffer, as (points, count, channels).
at::Tensor point_major(const at::Tensor& buffer, int64_t points, int64_t count, int64_t channels) {
  return buffer.narrow(0, 0, points * count * channels).view({points, count, channels});
}

// Each thread's transform buffers of one piece of work: `threads` x points x tiles a piece x
// channels, in the GEMM's type.
template <typename G>
std::vector<at::Tensor> piece_buffers(const at::Tensor& like, int64_t threads, int64_t elements) {
  const at::Tensor all = at::empty({threads, elements}, like.options().dtype(c10::CppTypeToScalarType<G>::value));
  std::vector<at::Tensor> each;
  for (int64_t thread = 0; thread < threads; ++thread) each.push_back(all.select(0, thread));
  return each;
}

// Writes the m x m output blocks of tiles first .. first + count from their products M (points
// point_stride apart, tile t's at m + t * c_out), finished by `finish`.
template <class W, typename T, typename G>
void transform_output_tiles(const G* m, int64_t point_stride, const TileGrid& grid, int64_t first, int64_t count,
                            const OutputFinish& finish, Acc<T>* scratch, T* spare, at::Tensor& out) {
  constexpr int kOut = W::kOut;
  const int64_t c_out = out.size(1);
  const int64_t image_stride = out.stride(0), row_stride = out.stride(2), pixel_stride = out.stride(3);
  T* output = out.mutable_data_ptr<T>();
  const Acc<T>* bias = finish.bias.const_data_ptr<Acc<T>>();
  const at::Tensor& relu_output = finish.relu_output;
  const T* relu_values = relu_output.defined() ? relu_output.const_data_ptr<T>() : nullptr;
  const int64_t relu_image_stride = relu_values ? relu_output.stride(0) : 0;
  const int64_t relu_row_stride = relu_values ? relu_output.stride(2) : 0;
  const int64_t relu_pixel_stride = relu_values ? relu_output.stride(3) : 0;
  T* out_rows[kOut];
  const T* relu_rows[kOut];
  for (int64_t t = 0; t < count; ++t) {
    const TilePosition pos = grid.position(first + t);
    for (int p = 0; p < kOut; ++p) {  // rows below the output go to `spare` (and read the last row's mask)
      const int64_t y = pos.y + p;
      out_rows[p] = y < grid.out_h ? output + pos.image * image_stride + y * row_stride + pos.x * pixel_stride : spare;
      relu_rows[p] = relu_values + pos.image * relu_image_stride + std::min(y, grid.out_h - 1) * relu_row_stride +
                     pos.x * relu_pixel_stride;
    }
    const int columns = int(std::min<int64_t>(kOut, grid.out_w - pos.x));
    output_transform<W, T, G>(m + t * c_out, point_stride, c_out, bias, finish.relu, relu_values ? relu_rows : nullptr,
                              relu_pixel_stride, scratch, out_rows, pixel_stride, columns);
  }
}

// out = the convolution of x, zero-padded by `pad` on every side, with the transformed weights
// (finished by `finish`: bias, ReLU): x and out in T, the transformed tiles, the weights and
// the GEMM in G (T, or float for bf16 computed in fp32). One parallel region: each thread takes
// pieces of tiles and transforms, multiplies and transforms back its own. Each piece's GEMMs
// read all the transformed weights, which is cheap while they are small.
template <class W, typename T, typename G>
void winograd_by_piece(at::TensorList x, int64_t pad, const TileGrid& grid, const PointWeights& weights,
                       const OutputFinish& finish, at::Tensor& out) {
  constexpr int kTile = W::kTile, kOut = W::kOut, kPoints = kTile * kTile;
  const int64_t c_in = joined_channels(x), c_out = out.size(1);
  const int64_t budget =
      weights.packed.defined() ? kOwnProductsBudgetBytes : sizeof(G) == 2 ? kBf16BudgetBytes : kBudgetBytes;
  const int64_t per_piece = grid.piece(kPoints, c_in + c_out, sizeof(G), budget);
  const int64_t pieces = (grid.tiles() + per_piece - 1) / per_piece, threads = worker_threads(pieces);
  const std::vector<at::Tensor> u_buffers = piece_buffers<G>(out, threads, kPoints * per_piece * c_in);
  const std::vector<at::Tensor> m_buffers = piece_buffers<G>(out, threads, kPoints * per_piece * c_out);

  for_each_piece(pieces, threads, [&](int64_t thread) {
    auto scratch = std::make_shared<TileScratch<T>>(std::max(kPoints * c_in, kTile * kOut * c_out), c_in);
    auto spare = std::make_shared<std::vector<T>>(kOut * out.stride(3));
    return [&, thread, scratch, spare](int64_t piece) {
      const int64_t first = piece * per_piece, count = std::min(per_piece, grid.tiles() - first);
      at::Tensor u = point_major(u_buffers[thread], kPoints, count, c_in);
      at::Tensor m = point_major(m_buffers[thread], kPoints, count, c_out);
      transform_input_tiles<W, T, G>(x, pad, grid, first, count, u.mutable_data_ptr<G>(), *scratch, count * c_in);
      weights.multiply<G>(u, m, 0, kPoints);
      transform_output_tiles<W, T, G>(m.const_data_ptr<G>(), count * c_out, grid, first, count, finish,
                                      scratch->values.data(), spare->data(), out);
    };
  });
}

// The same convolution for transformed weights too large to stay in cache (over kPointProductsMaxWeightBytes):
// all threads share chunks of tiles within about kByPointBudgetBytes, and each chunk's
// products are made point by point, so that each point's weights are read once a chunk, not
// once a piece of each thread. Three parallel regions a chunk: input transforms, products, output transforms.
template <class W, typename T, typename G>
void winograd_by_point(at::TensorList x, int64_t pad, const TileGrid& grid, const PointWeights& weights,
                       const OutputFinish& finish, at::Tensor& out) {
  constexpr int kTile = W::kTile, kOut = W::kOut, kPoints = kTile * kTile;
  const int64_t c_in = joined_channels(x), c_out = out.size(1);
  const int64_t chunk =
      evened_chunk(kByPointBudgetBytes / (kPoints * (c_in + c_out) * int64_t(sizeof(G))), grid.tiles());
  const auto options = out.options().dtype(c10::CppTypeToScalarType<G>::value);
  const at::Tensor u_buffer = at::empty({kPoints * chunk * c_in}, options);
  const at::Tensor m_buffer = at::empty({kPoints * chunk * c_out}, options);
  const int64_t scratch_values = std::max(kPoints * c_in, kTile * kOut * c_out);

  for (int64_t first = 0; first < grid.tiles(); first += chunk) {
    const int64_t count = std::min(chunk, grid.tiles() - first);
    at::Tensor u = point_major(u_buffer, kPoints, count, c_in);
    at::Tensor m = point_major(m_buffer, kPoints, count, c_out);
    G* u_data = u.mutable_data_ptr<G>();
    const G* m_data = m.const_data_ptr<G>();
    parallel_pieces(0, count, 1, [&](int64_t begin, int64_t end) {
      TileScratch<T> scratch(scratch_values, c_in);
      transform_input_tiles<W, T, G>(x, pad, grid, first + begin, end - begin, u_data + begin * c_in, scratch,
                                     count * c_in);
    });
    for_each_piece(kPoints, worker_threads(kPoints), [&](int64_t) {
      return [&](int64_t point) { weights.multiply<G>(u, m, point, 1); };
    });
    parallel_pieces(0, count, 1, [&](int64_t begin, int64_t end) {
      std::vector<Acc<T>> scratch(scratch_values);
      std::vector<T> spare(kOut * out.stride(3));
      transform_output_tiles<W, T, G>(m_data + begin * c_out, count * c_out, grid, first + begin, end - begin,
                                      finish, scratch.data(), spare.data(), out);
    });
  }
}

template <class W, typename T, typename G>
void winograd_typed(at::TensorList x, int64_t pad, const PointWeights& weights, const OutputFinish& finish,
                    at::Tensor& out) {
  const TileGrid grid(W::kOut, x[0].size(0), out.size(2), out.size(3));
  if (weights.large) {
    winograd_by_point<W, T, G>(x, pad, grid, weights, finish, out);
  } else {
    winograd_by_piece<W, T, G>(x, pad, grid, weights, finish, out);
  }
}

// grad_weight_t[point] = sum over tiles of (A dY A^T)^T (B^T d B): the weight gradient in the
// transform domain, (points, C_out, C_in), summed in Acc<T> (bf16 products of a chunk are added
// to it in float, so the sum over chunks is not rounded to bf16); the transformed tiles and the
// GEMM in G. Chunk by chunk of tiles, two parallel regions each: the transforms, in pieces of
// tiles, then the products, point by point. Each point's sum is one GEMM over the chunk's tiles
// added to the sums of the chunks before, so the result does not depend on which thread did what.
template <class W, typename T, typename G>
void winograd_weight_grad_typed(const at::Tensor& grad, const at::Tensor& x, at::Tensor& grad_weight_t) {
  constexpr int kTile = W::kTile, kOut = W::kOut, kPoints = kTile * kTile;
  constexpr bool in_place = std::is_same_v<G, Acc<T>>;
  const int64_t c_in = x.size(1), c_out = grad.size(1), out_h = grad.size(2), out_w = grad.size(3);
  const TileGrid grid(kOut, x.size(0), out_h, out_w);
  const int64_t chunk = grid.chunk(kPoints, c_in + c_out, sizeof(G));
  const int64_t per_piece = std::max<int64_t>(1, chunk / (4 * at::get_num_threads()));
  const auto options = x.options().dtype(c10::CppTypeToScalarType<G>::value);
  at::Tensor u_buffer = at::empty({kPoints * chunk * c_in}, options);
  at::Tensor dm_buffer = at::empty({kPoints * chunk * c_out}, options);
  // Each thread's products of a point, where they are added to the sums in another type.
  const std::vector<at::Tensor> product_buffers =
      piece_buffers<G>(x, worker_threads(kPoints), in_place ? 0 : c_out * c_in);
  const T* gradient = grad.const_data_ptr<T>();
  const int64_t image_stride = grad.stride(0), row_stride = grad.stride(2), pixel_stride = grad.stride(3);
  if (grid.tiles() == 0) grad_weight_t.zero_();

  for (int64_t first = 0; first < grid.tiles(); first += chunk) {
    const int64_t count = std::min(chunk, grid.tiles() - first);
    const bool first_chunk = first == 0;  // its products are the sums' first values: no zeroing pass
    at::Tensor u = point_major(u_buffer, kPoints, count, c_in);
    at::Tensor dm = point_major(dm_buffer, kPoints, count, c_out);
    G* u_data = u.mutable_data_ptr<G>();
    G* dm_data = dm.mutable_data_ptr<G>();
    const int64_t pieces = (count + per_piece - 1) / per_piece;
    for_each_piece(pieces, worker_threads(pieces), [&](int64_t) {
      // zeros: a pixel's input channels, or a row of kOut gradient pixels pixel_stride apart
      auto scratch = std::make_shared<TileScratch<T>>(std::max(kPoints * c_in, kTile * kOut * c_out),
                                                      std::max(c_in, kOut * pixel_stride));
      return [&, scratch](int64_t piece) {
        const int64_t begin = piece * per_piece, end = std::min(count, begin + per_piece);
        for (int64_t t = begin; t < end; ++t) {
          transform_input_tiles<W, T, G>(x, 0, grid, first + t, 1, u_data + t * c_in, *scratch, count * c_in);
          const TilePosition pos = grid.position(first + t);
          const T* rows[kOut + 1];
          rows[kOut] = scratch->zeros.data();  // a row of zeros
          for (int p = 0; p < kOut; ++p) {
            const int64_t y = pos.y + p;
            rows[p] = y < out_h ? gradient + pos.image * image_stride + y * row_stride + pos.x * pixel_stride
                                : rows[kOut];
          }
          const int columns = int(std::min<int64_t>(kOut, out_w - pos.x));
          grad_transform<W, T, G>(rows, columns, c_out, pixel_stride, scratch->values.data(), dm_data + t * c_out,
                                  count * c_out);
        }
      };
    });
    const at::Tensor dm_t = dm.transpose(1, 2);
    for_each_piece(kPoints, worker_threads(kPoints), [&](int64_t thread) {
      return [&, thread](int64_t point) {
        RECORD_FUNCTION("unet_fast::point_gemms", std::vector<c10::IValue>());
        at::Tensor sum = grad_weight_t[point];
        if constexpr (in_place) {
          if (first_chunk) {
            at::mm_out(sum, dm_t[point], u[point]);
          } else {
            sum.addmm_(dm_t[point], u[point]);
          }
        } else {
          at::Tensor products = product_buffers[thread].view({c_out, c_in});
          at::mm_out(products, dm_t[point], u[point]);
          if (first_chunk) {
            sum.copy_(products);
          } else {
            sum.add_(products);
          }
        }
      };
    });
  }
}

// Output channels a slice takes, of `channels`: as many as keep the transformed weights (or
// weight sums) of `other_channels` x them within `budget` bytes, evened out (evened_chunk: up
// to 1.5x the budget where that saves a slice).
int64_t channels_a_slice(int64_t budget, int64_t points, int64_t channels, int64_t other_channels,
                         int64_t element_size) {
  return evened_chunk(budget / (points * other_channels * element_size), channels);
}

// out = the convolution of x (zero-padded by `pad`) with `weight`, whose output channels are
// dim `out_dim` of it (0; 1 for the data gradient's weights, turned), finished by `finish`, a
// slice of output channels at a time: each slice's weights transformed, then all tiles swept.
template <class W>
void winograd_in_slices(at::TensorList x, int64_t pad, const at::Tensor& weight, int64_t out_dim,
                        const OutputFinish& finish, bool float_gemm, bool aten_gemm, at::Tensor& out) {
  constexpr int kPoints = W::kTile * W::kTile;
  const int64_t channels = out.size(1);
  const auto gemm_type = float_gemm ? at::kFloat : weight.scalar_type();
  const int64_t slice = channels_a_slice(kWeightsBudgetBytes, kPoints, channels, joined_channels(x),
                                         int64_t(c10::elementSize(gemm_type)));
  for (int64_t first = 0; first < channels; first += slice) {
    const int64_t count = std::min(slice, channels - first);
    const PointWeights weights = point_weights<W>(weight, out_dim, first, count, float_gemm, aten_gemm);
    at::Tensor out_slice = out.narrow(1, first, count);
    with_types(x[0].scalar_type(), float_gemm, "winograd_conv3x3", [&](auto storage, auto gemm) {
      winograd_typed<W, decltype(storage), decltype(gemm)>(x, pad, weights, finish.channels(first, count),
                                                           out_slice);
    });
  }
}

template <class W>
at::Tensor forward(at::TensorList sources, const at::Tensor& weight, const std::optional<at::Tensor>& bias, bool relu,
                   bool float_gemm, bool aten_gemm) {
  std::vector<at::Tensor> x;
  for (const at::Tensor& source : sources) x.push_back(with_channels_innermost(source));
  const int64_t c_out = weight.size(0);
  at::Tensor out = at::empty({x[0].size(0), c_out, x[0].size(2) - 2, x[0].size(3) - 2},
                             x[0].options().memory_format(at::MemoryFormat::ChannelsLast));
  const auto options = acc_options(x[0]);
  const at::Tensor bias_values = bias ? bias->to(options.dtype()).contiguous() : at::zeros({c_out}, options);
  winograd_in_slices<W>(x, 0, weight, 0, {bias_values, relu}, float_gemm, aten_gemm, out);
  return out;
}

template <class W>
at::Tensor data_grad(const at::Tensor& grad_in, const at::Tensor& weight, bool float_gemm,
                     const std::optional<at::Tensor>& relu_output, bool aten_gemm) {
  const at::Tensor grad = grad_in.contiguous(at::MemoryFormat::ChannelsLast);
  const int64_t c_in = weight.size(1);
  at::Tensor grad_x = at::empty({grad.size(0), c_in, grad.size(2) + 2, grad.size(3) + 2},
                                grad.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (relu_output) {
    TORCH_CHECK(relu_output->sizes() == grad_x.sizes() && relu_output->scalar_type() == grad.scalar_type(),
                "winograd_conv3x3_data_grad: relu_output must have x's shape ", grad_x.sizes(), " and the gradient's "
                "dtype, got ", relu_output->sizes(), " ", relu_output->scalar_type());
  }
  // The full convolution with the weights turned by 180 degrees and C_in, C_out swapped.
  const OutputFinish finish{at::zeros({c_in}, acc_options(grad)), false,
                            relu_output ? with_channels_innermost(*relu_output) : at::Tensor()};
  winograd_in_slices<W>(grad, 2, weight, 1, finish, float_gemm, aten_gemm, grad_x);
  return grad_x;
}

// The weight gradient is summed in the transform domain a slice of output channels at a time,
// whose sums stay within kSumsBudgetBytes; each further slice transforms the input tiles
// again, which costs little beside those layers' GEMMs.
template <class W>
at::Tensor weight_grad(const at::Tensor& grad_in, const at::Tensor& x_in, bool float_gemm,
                       std::optional<at::ScalarType> result_dtype) {
  constexpr int kPoints = W::kTile * W::kTile;
  const at::Tensor grad = grad_in.contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor x = with_channels_innermost(x_in);
  const int64_t c_in = x.size(1), c_out = grad.size(1);
  const auto sums_options = acc_options(x);
  const int64_t slice = channels_a_slice(kSumsBudgetBytes, kPoints, c_out, c_in,
                                         int64_t(c10::elementSize(sums_options.dtype().toScalarType())));
  const auto dtype = result_dtype.value_or(x.scalar_type());
  TORCH_CHECK(dtype == x.scalar_type() || (float_gemm && dtype == at::kFloat),
              "winograd_conv3x3_weight_grad: a ", dtype, " result is for bf16 inputs with GEMMs in float");
  at::Tensor grad_weight =
      at::empty({c_out, c_in, 3, 3}, x.options().dtype(dtype).memory_format(at::MemoryFormat::ChannelsLast));
  with_types(x.scalar_type(), float_gemm, "winograd_conv3x3_weight_grad", [&](auto storage, auto gemm) {
    using scalar_t = decltype(storage);
    // The taps in R: scalar_t, or float from the float sums of bf16 inputs (Acc<bf16> is float).
    const auto untransform_into = [&](auto* g) {
      using R = std::remove_pointer_t<decltype(g)>;
      for (int64_t first = 0; first < c_out; first += slice) {
        const int64_t count = std::min(slice, c_out - first);
        at::Tensor grad_weight_t = at::empty({kPoints, count, c_in}, sums_options);
        winograd_weight_grad_typed<W, scalar_t, decltype(gemm)>(grad.narrow(1, first, count), x, grad_weight_t);
        // Back from the transform domain, output channel by output channel.
        const Acc<R>* du = grad_weight_t.const_data_ptr<Acc<R>>();
        parallel_pieces(0, count, 1, [&](int64_t begin, int64_t end) {
          std::vector<Acc<R>> scratch(3 * W::kTile * c_in);
          R* taps[9];
          for (int64_t o = begin; o < end; ++o) {
            for (int k = 0; k < 9; ++k) taps[k] = g + ((first + o) * 9 + k) * c_in;
            untransform_filters<W, R>(du + o * c_in, count * c_in, c_in, scratch.data(), taps);
          }
        });
      }
    };
    if constexpr (std::is_same_v<Acc<scalar_t>, float>) {
      if (dtype == at::kFloat) return untransform_into(grad_weight.mutable_data_ptr<float>());
    }
    untransform_into(grad_weight.mutable_data_ptr<scalar_t>());
  });
  return grad_weight;
}

// fn(Minimal<block>{}) for block 2, 4 or 6.
template <typename Fn>
at::Tensor with_block(int block, Fn&& fn) {
  switch (block) {
    case 2:
      return fn(Minimal<2>{});
    case 4:
      return fn(Minimal<4>{});
    case 6:
      return fn(Minimal<6>{});
  }
  TORCH_CHECK(false, "Winograd block must be 2, 4 or 6, got ", block);
}

}  // namespace

at::Tensor winograd_conv3x3(at::TensorList x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                            bool relu, int block, bool float_gemm, bool aten_gemm) {
  TORCH_CHECK(!x.empty(), "winograd_conv3x3: no input");
  for (const at::Tensor& source : x) {
    TORCH_CHECK(source.dim() == 4 && source.size(0) == x[0].size(0) && source.size(2) == x[0].size(2) &&
                    source.size(3) == x[0].size(3) && source.scalar_type() == x[0].scalar_type(),
                "winograd_conv3x3: the sources joined along the channels need one batch, height, width and dtype");
  }
  return with_block(block,
                    [&](auto w) { return forward<decltype(w)>(x, weight, bias, relu, float_gemm, aten_gemm); });
}

at::Tensor winograd_conv3x3_data_grad(const at::Tensor& grad, const at::Tensor& weight, int block, bool float_gemm,
                                      const std::optional<at::Tensor>& relu_output, bool aten_gemm) {
  return with_block(block, [&](auto w) {
    return data_grad<decltype(w)>(grad, weight, float_gemm, relu_output, aten_gemm);
  });
}

at::Tensor winograd_conv3x3_weight_grad(const at::Tensor& grad, const at::Tensor& x, int block, bool float_gemm,
                                        std::optional<at::ScalarType> result_dtype) {
  return with_block(block, [&](auto w) { return weight_grad<decltype(w)>(grad, x, float_gemm, result_dtype); });
}

}  // namespace unet_fast
