// Winograd's minimal filtering F(4x4, 3x3) (Lavin & Gray, 2016) for the valid 3x3 convolution:
// each 4x4 block of output pixels comes from a 6x6 input tile as
//   Y = A^T [ sum_ci (G g G^T) . (B^T d B) ] A,
// so the 36 multiplications per channel pair and tile replace direct convolution's 144. The
// input transform reads the channels_last input directly (tiles past the edge read zeros),
// the 36 transform-domain products are one batched GEMM (ATen, so MKL/oneDNN), and the output
// transform adds the bias, applies the ReLU and writes only the pixels inside the output.
// Tiles are worked through in chunks whose buffers stay within kBudgetBytes.
#include "winograd.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "target_clones.h"

namespace unet_fast {
namespace {

constexpr int kTile = 6;             // input tile side
constexpr int kOut = 4;              // output block side
constexpr int kPoints = kTile * kTile;  // transform-domain points
constexpr int64_t kBudgetBytes = 16 << 20;  // transform buffers per chunk of tiles (64 MB: no faster)
// Below these the direct convolution wins or ties (measured forward, data and weight gradients,
// layers of 16 to 1024 channels at 9 to 20449 blocks: docs/winograd.md): too little work a
// call to pay for the transforms, and, forward and data gradient below 64 channels, too little
// arithmetic per byte the transforms move (16 channels at 570: 0.5x). Wide layers, and every
// weight gradient, pay from fewer blocks.
constexpr int64_t kWeightGradMinChannels = 16;
constexpr int64_t kMinChannels = 64;
constexpr int64_t kMinTiles = 64;
constexpr int64_t kFewTiles = 36;  // enough for layers this wide, and for weight gradients
constexpr int64_t kWideChannels = 512;

// G (6x3) of F(4, 3); the weight transform is G g G^T.
constexpr double kG[kTile][3] = {{1.0 / 4, 0, 0},
                                 {-1.0 / 6, -1.0 / 6, -1.0 / 6},
                                 {-1.0 / 6, 1.0 / 6, -1.0 / 6},
                                 {1.0 / 24, 1.0 / 12, 1.0 / 6},
                                 {1.0 / 24, -1.0 / 12, 1.0 / 6},
                                 {0, 0, 1}};

// wt[(a, b) * point_stride + o * C + c] = (G g G^T)[a][b] for the 3x3 filter g of output
// channel o and input channel c, turned by 180 degrees if `turned`; taps[k] points at the C
// input channels of tap k = 3 i + j of output channel o (channels_last weights).
template <typename T>
UNET_FAST_CPU_CLONES void transform_filters(const T* const* taps, int64_t channels, bool turned, T* scratch,
                                            T* wt, int64_t point_stride) {
  for (int a = 0; a < kTile; ++a) {  // scratch[a][j] = (G g)[a][j]
    for (int j = 0; j < 3; ++j) {
      const T g0 = T(kG[a][0]), g1 = T(kG[a][1]), g2 = T(kG[a][2]);
      const T *t0 = taps[turned ? 8 - j : j], *t1 = taps[turned ? 5 - j : 3 + j], *t2 = taps[turned ? 2 - j : 6 + j];
      T* out = scratch + (a * 3 + j) * channels;
#pragma omp simd
      for (int64_t c = 0; c < channels; ++c) out[c] = g0 * t0[c] + g1 * t1[c] + g2 * t2[c];
    }
  }
  for (int a = 0; a < kTile; ++a) {  // wt[a][b] = (G g G^T)[a][b]
    const T *s0 = scratch + a * 3 * channels, *s1 = s0 + channels, *s2 = s1 + channels;
    for (int b = 0; b < kTile; ++b) {
      const T g0 = T(kG[b][0]), g1 = T(kG[b][1]), g2 = T(kG[b][2]);
      T* out = wt + (a * kTile + b) * point_stride;
#pragma omp simd
      for (int64_t c = 0; c < channels; ++c) out[c] = g0 * s0[c] + g1 * s1[c] + g2 * s2[c];
    }
  }
}

// out[c] = sum over the six rows of G[row][column] * rows[row][c], rows with a zero
// coefficient skipped. Always inlined, so it is built for the target of its caller.
template <typename T>
__attribute__((always_inline)) inline void g_column_times_rows(int column, const T* const* rows, T* out,
                                                               int64_t channels) {
  std::fill_n(out, channels, T(0));
  for (int row = 0; row < kTile; ++row) {
    const T g = T(kG[row][column]);
    if (g == T(0)) continue;
    const T* r = rows[row];
#pragma omp simd
    for (int64_t c = 0; c < channels; ++c) out[c] += g * r[c];
  }
}

// The adjoint: taps[k][c] = (G^T d G)[i][j] for the 36 points d[(a, b)] = du[(a, b) * point_stride
// + c], k = 3 i + j.
template <typename T>
UNET_FAST_CPU_CLONES void untransform_filters(const T* du, int64_t point_stride, int64_t channels, T* scratch,
                                              T* const* taps) {
  for (int b = 0; b < kTile; ++b) {  // scratch[i][b] = (G^T d)[i][b]
    const T* column[kTile];
    for (int a = 0; a < kTile; ++a) column[a] = du + (a * kTile + b) * point_stride;
    for (int i = 0; i < 3; ++i) g_column_times_rows(i, column, scratch + (i * kTile + b) * channels, channels);
  }
  for (int i = 0; i < 3; ++i) {  // taps[i][j] = (G^T d G)[i][j]
    const T* row[kTile];
    for (int b = 0; b < kTile; ++b) row[b] = scratch + (i * kTile + b) * channels;
    for (int j = 0; j < 3; ++j) g_column_times_rows(j, row, taps[3 * i + j], channels);
  }
}

// (36, C_out, C_in): point (a, b) holds G g G^T [a][b] for every channel pair (g turned by
// 180 degrees if `turned`). The transposed view (36, C_in, C_out) is the forward's right GEMM
// operand; as it is, the turned transform is the data gradient's (a convolution from C_out
// to C_in channels).
at::Tensor transform_weight(const at::Tensor& weight_in, bool turned) {
  const at::Tensor weight = weight_in.contiguous(at::MemoryFormat::ChannelsLast);
  const int64_t c_out = weight.size(0), c_in = weight.size(1);
  at::Tensor wt = at::empty({kPoints, c_out, c_in}, weight.options());
  AT_DISPATCH_FLOATING_TYPES(weight.scalar_type(), "winograd_transform_weight", [&] {
    const scalar_t* g = weight.const_data_ptr<scalar_t>();
    scalar_t* out = wt.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, c_out, 1, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> scratch(kTile * 3 * c_in);
      const scalar_t* taps[9];
      for (int64_t o = begin; o < end; ++o) {
        for (int k = 0; k < 9; ++k) taps[k] = g + (o * 9 + k) * c_in;
        transform_filters<scalar_t>(taps, c_in, turned, scratch.data(), out + o * c_in, c_out * c_in);
      }
    });
  });
  return wt;
}

// Image, first output row and first output column of a tile's 4x4 output block.
struct TilePosition {
  int64_t image, y, x;
};

// out[i * stride + c] = (B^T v)[i] for the six channel vectors v[0..5] (B^T of F(4, 3)).
// Always inlined, so it is built for the target of the function that calls it.
template <typename T>
__attribute__((always_inline)) inline void b_transpose(const T* const* v, T* out, int64_t stride, int64_t channels) {
  const T *v0 = v[0], *v1 = v[1], *v2 = v[2], *v3 = v[3], *v4 = v[4], *v5 = v[5];
#pragma omp simd
  for (int64_t c = 0; c < channels; ++c) {
    out[c] = T(4) * v0[c] - T(5) * v2[c] + v4[c];
    out[stride + c] = -T(4) * (v1[c] + v2[c]) + v3[c] + v4[c];
    out[2 * stride + c] = T(4) * (v1[c] - v2[c]) - v3[c] + v4[c];
    out[3 * stride + c] = T(2) * (v3[c] - v1[c]) - v2[c] + v4[c];
    out[4 * stride + c] = T(2) * (v1[c] - v3[c]) - v2[c] + v4[c];
    out[5 * stride + c] = T(4) * v1[c] - T(5) * v3[c] + v5[c];
  }
}

// U[point][t][c] = (B^T d B)[point] for the 6x6 input tile whose pixels' channel vectors
// start at rows[6 a + b]; U's points lie point_stride apart. `scratch` holds 36 x C values.
template <typename T>
UNET_FAST_CPU_CLONES void input_transform(const T* const* rows, int64_t channels, T* scratch, T* u,
                                          int64_t point_stride) {
  for (int b = 0; b < kTile; ++b) {  // columns: scratch[a][b] = (B^T d)[a][b]
    const T* column[kTile] = {rows[b], rows[6 + b], rows[12 + b], rows[18 + b], rows[24 + b], rows[30 + b]};
    b_transpose(column, scratch + b * channels, kTile * channels, channels);
  }
  for (int a = 0; a < kTile; ++a) {  // rows: U[a][j] = (scratch B)[a][j]
    const T* row = scratch + a * kTile * channels;
    const T* row_points[kTile] = {row, row + channels, row + 2 * channels, row + 3 * channels, row + 4 * channels,
                                  row + 5 * channels};
    b_transpose(row_points, u + a * kTile * point_stride, point_stride, channels);
  }
}

// The 4x4 output block A^T M A + bias (then the ReLU) of one tile: M[point] at m + point *
// point_stride; output row p goes to out_rows[p] (columns q at out_rows[p] + q * channels),
// of which only the first `columns` are written. `scratch` holds 24 x C values.
template <typename T>
UNET_FAST_CPU_CLONES void output_transform(const T* m, int64_t point_stride, int64_t channels, const T* bias,
                                           bool relu, T* scratch, T* const* out_rows, int columns) {
  for (int a = 0; a < kTile; ++a) {  // rows: s[a][q] = (M A)[a][q]
    const T* m0 = m + a * kTile * point_stride;
    const int64_t p = point_stride;
    T* s = scratch + a * kOut * channels;
#pragma omp simd
    for (int64_t c = 0; c < channels; ++c) {
      const T m1 = m0[p + c], m2 = m0[2 * p + c], m3 = m0[3 * p + c], m4 = m0[4 * p + c];
      s[c] = m0[c] + m1 + m2 + m3 + m4;
      s[channels + c] = m1 - m2 + T(2) * (m3 - m4);
      s[2 * channels + c] = m1 + m2 + T(4) * (m3 + m4);
      s[3 * channels + c] = m1 - m2 + T(8) * (m3 - m4) + m0[5 * p + c];
    }
  }
  const int64_t row = kOut * channels;
  for (int q = 0; q < columns; ++q) {  // columns: Y[p][q] = (A^T s)[p][q]
    const T* s0 = scratch + q * channels;
    T *y0 = out_rows[0] + q * channels, *y1 = out_rows[1] + q * channels, *y2 = out_rows[2] + q * channels,
      *y3 = out_rows[3] + q * channels;
#pragma omp simd
    for (int64_t c = 0; c < channels; ++c) {
      const T t1 = s0[row + c], t2 = s0[2 * row + c], t3 = s0[3 * row + c], t4 = s0[4 * row + c];
      T v0 = s0[c] + t1 + t2 + t3 + t4 + bias[c];
      T v1 = t1 - t2 + T(2) * (t3 - t4) + bias[c];
      T v2 = t1 + t2 + T(4) * (t3 + t4) + bias[c];
      T v3 = t1 - t2 + T(8) * (t3 - t4) + s0[5 * row + c] + bias[c];
      if (relu) {  // x < 0 ? 0 : x keeps NaN, as torch.relu does
        v0 = v0 < T(0) ? T(0) : v0;
        v1 = v1 < T(0) ? T(0) : v1;
        v2 = v2 < T(0) ? T(0) : v2;
        v3 = v3 < T(0) ? T(0) : v3;
      }
      y0[c] = v0;
      y1[c] = v1;
      y2[c] = v2;
      y3[c] = v3;
    }
  }
}

// out = the convolution of x, zero-padded by `pad` on every side, with the transformed weights
// (plus bias, then the ReLU if `relu`). Tiles read zeros wherever they leave x.
// The 6x6 transform A dY A^T of one 4x4 block of output gradient, the adjoint of the output
// transform: dY's row p starts at rows[p] (columns q at rows[p] + q * channels), rows below the
// output at a row of zeros, rows[4]; only the first `columns` columns are read. Points lie
// point_stride apart in dm; `scratch` holds 24 x C values.
template <typename T>
UNET_FAST_CPU_CLONES void grad_transform(const T* const* rows, int columns, int64_t channels, T* scratch,
                                         T* dm, int64_t point_stride) {
  const T* zeros = rows[kOut];
  for (int q = 0; q < kOut; ++q) {  // columns: s[a][q] = (A dY)[a][q]
    const T* z0 = q < columns ? rows[0] + q * channels : zeros;
    const T* z1 = q < columns ? rows[1] + q * channels : zeros;
    const T* z2 = q < columns ? rows[2] + q * channels : zeros;
    const T* z3 = q < columns ? rows[3] + q * channels : zeros;
    T* s = scratch + q * channels;
    const int64_t row = kOut * channels;
#pragma omp simd
    for (int64_t c = 0; c < channels; ++c) {
      const T even = z0[c] + z2[c], odd = z1[c] + z3[c];
      const T even4 = z0[c] + T(4) * z2[c], odd4 = T(2) * z1[c] + T(8) * z3[c];
      s[c] = z0[c];
      s[row + c] = even + odd;
      s[2 * row + c] = even - odd;
      s[3 * row + c] = even4 + odd4;
      s[4 * row + c] = even4 - odd4;
      s[5 * row + c] = z3[c];
    }
  }
  for (int a = 0; a < kTile; ++a) {  // rows: dM[a][b] = (s A^T)[a][b]
    const T* s = scratch + a * kOut * channels;
    T* out = dm + a * kTile * point_stride;
    const int64_t p = point_stride;
#pragma omp simd
    for (int64_t c = 0; c < channels; ++c) {
      const T z0 = s[c], z1 = s[channels + c], z2 = s[2 * channels + c], z3 = s[3 * channels + c];
      const T even = z0 + z2, odd = z1 + z3, even4 = z0 + T(4) * z2, odd4 = T(2) * z1 + T(8) * z3;
      out[c] = z0;
      out[p + c] = even + odd;
      out[2 * p + c] = even - odd;
      out[3 * p + c] = even4 + odd4;
      out[4 * p + c] = even4 - odd4;
      out[5 * p + c] = z3;
    }
  }
}

// The 4x4 output blocks of a convolution with an out_h x out_w output, over the batch.
struct TileGrid {
  int64_t images, out_h, out_w, tiles_y, tiles_x;
  TileGrid(int64_t images, int64_t out_h, int64_t out_w)
      : images(images), out_h(out_h), out_w(out_w), tiles_y((out_h + kOut - 1) / kOut),
        tiles_x((out_w + kOut - 1) / kOut) {}
  int64_t tiles() const { return images * tiles_y * tiles_x; }
  // Image, first output row and column of tile number `tile`.
  TilePosition position(int64_t tile) const {
    const int64_t per_image = tiles_y * tiles_x, within = tile % per_image;
    return {tile / per_image, within / tiles_x * kOut, within % tiles_x * kOut};
  }
  // Tiles per chunk such that the chunk's transform buffers of c_in + c_out channels stay in budget.
  int64_t chunk(int64_t channels, int64_t element_size) const {
    return std::clamp<int64_t>(kBudgetBytes / (kPoints * channels * element_size), 1, tiles());
  }
};

// u[point][t][c] = (B^T d B) for tiles first .. first + count of the channels_last input x,
// zero-padded by `pad`; d is the tile's 6x6 window of x, starting `pad` before its output block.
template <typename T>
void transform_input_tiles(const at::Tensor& x, int64_t pad, const TileGrid& grid, int64_t first, int64_t count,
                           T* u) {
  const int64_t channels = x.size(1), height = x.size(2), width = x.size(3);
  const T* input = x.const_data_ptr<T>();
  at::parallel_for(0, count, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> scratch(kPoints * channels), zeros(channels, T(0));
    const T* rows[kPoints];
    for (int64_t t = begin; t < end; ++t) {
      const TilePosition pos = grid.position(first + t);
      for (int a = 0; a < kTile; ++a) {
        for (int b = 0; b < kTile; ++b) {
          const int64_t y = pos.y + a - pad, x = pos.x + b - pad;
          const bool inside = y >= 0 && y < height && x >= 0 && x < width;
          rows[a * kTile + b] = inside ? input + ((pos.image * height + y) * width + x) * channels : zeros.data();
        }
      }
      input_transform<T>(rows, channels, scratch.data(), u + t * channels, count * channels);
    }
  });
}

// out = the convolution of x, zero-padded by `pad` on every side, with the transformed weights
// (plus bias, then the ReLU if `relu`).
template <typename T>
void winograd_typed(const at::Tensor& x, int64_t pad, const at::Tensor& weight_t, const at::Tensor& bias_values,
                    bool relu, at::Tensor& out) {
  const int64_t c_in = x.size(1), c_out = out.size(1), out_h = out.size(2), out_w = out.size(3);
  const TileGrid grid(x.size(0), out_h, out_w);
  const int64_t chunk = grid.chunk(c_in + c_out, sizeof(T));
  at::Tensor u_buffer = at::empty({kPoints * chunk * c_in}, x.options());
  at::Tensor m_buffer = at::empty({kPoints * chunk * c_out}, x.options());
  const T* bias = bias_values.const_data_ptr<T>();
  T* output = out.mutable_data_ptr<T>();

  for (int64_t first = 0; first < grid.tiles(); first += chunk) {
    const int64_t count = std::min(chunk, grid.tiles() - first);
    at::Tensor u = u_buffer.narrow(0, 0, kPoints * count * c_in).view({kPoints, count, c_in});
    at::Tensor m = m_buffer.narrow(0, 0, kPoints * count * c_out).view({kPoints, count, c_out});
    transform_input_tiles<T>(x, pad, grid, first, count, u.mutable_data_ptr<T>());
    at::bmm_out(m, u, weight_t);
    const T* m_data = m.const_data_ptr<T>();
    at::parallel_for(0, count, 1, [&](int64_t begin, int64_t end) {
      std::vector<T> scratch(kTile * kOut * c_out), spare(kOut * c_out);
      T* out_rows[kOut];
      for (int64_t t = begin; t < end; ++t) {
        const TilePosition pos = grid.position(first + t);
        for (int p = 0; p < kOut; ++p) {  // rows below the output are written to `spare`
          const int64_t y = pos.y + p;
          out_rows[p] = y < out_h ? output + ((pos.image * out_h + y) * out_w + pos.x) * c_out : spare.data();
        }
        const int columns = int(std::min<int64_t>(kOut, out_w - pos.x));
        output_transform<T>(m_data + t * c_out, count * c_out, c_out, bias, relu, scratch.data(), out_rows, columns);
      }
    });
  }
}

// grad_weight_t[point] = sum over tiles of (A dY A^T)^T (B^T d B): the weight gradient in the
// transform domain, (36, C_out, C_in), accumulated chunk by chunk.
template <typename T>
void winograd_weight_grad_typed(const at::Tensor& grad, const at::Tensor& x, at::Tensor& grad_weight_t) {
  const int64_t c_in = x.size(1), c_out = grad.size(1), out_h = grad.size(2), out_w = grad.size(3);
  const TileGrid grid(x.size(0), out_h, out_w);
  const int64_t chunk = grid.chunk(c_in + c_out, sizeof(T));
  at::Tensor u_buffer = at::empty({kPoints * chunk * c_in}, x.options());
  at::Tensor dm_buffer = at::empty({kPoints * chunk * c_out}, x.options());
  const T* gradient = grad.const_data_ptr<T>();
  grad_weight_t.zero_();

  for (int64_t first = 0; first < grid.tiles(); first += chunk) {
    const int64_t count = std::min(chunk, grid.tiles() - first);
    at::Tensor u = u_buffer.narrow(0, 0, kPoints * count * c_in).view({kPoints, count, c_in});
    at::Tensor dm = dm_buffer.narrow(0, 0, kPoints * count * c_out).view({kPoints, count, c_out});
    transform_input_tiles<T>(x, 0, grid, first, count, u.mutable_data_ptr<T>());
    T* dm_data = dm.mutable_data_ptr<T>();
    at::parallel_for(0, count, 1, [&](int64_t begin, int64_t end) {
      std::vector<T> scratch(kTile * kOut * c_out), zeros(kOut * c_out, T(0));  // a row of zeros
      const T* rows[kOut + 1];
      rows[kOut] = zeros.data();
      for (int64_t t = begin; t < end; ++t) {
        const TilePosition pos = grid.position(first + t);
        for (int p = 0; p < kOut; ++p) {
          const int64_t y = pos.y + p;
          rows[p] = y < out_h ? gradient + ((pos.image * out_h + y) * out_w + pos.x) * c_out : zeros.data();
        }
        const int columns = int(std::min<int64_t>(kOut, out_w - pos.x));
        grad_transform<T>(rows, columns, c_out, scratch.data(), dm_data + t * c_out, count * c_out);
      }
    });
    grad_weight_t.baddbmm_(dm.transpose(1, 2), u);
  }
}

}  // namespace

bool winograd_pays(WinogradPass pass, at::ScalarType dtype, int64_t images, int64_t c_in, int64_t c_out,
                   int64_t out_h, int64_t out_w) {
  const char* setting = std::getenv("UNET_FAST_WINOGRAD");
  if (setting && std::strcmp(setting, "0") == 0) return false;
  const bool weight_grad = pass == WinogradPass::kWeightGrad;
  const bool wide = c_in >= kWideChannels && c_out >= kWideChannels;
  const int64_t min_channels = weight_grad ? kWeightGradMinChannels : kMinChannels;
  return (dtype == at::kFloat || dtype == at::kDouble) && c_in >= min_channels && c_out >= min_channels &&
         TileGrid(images, out_h, out_w).tiles() >= (weight_grad || wide ? kFewTiles : kMinTiles);
}

at::Tensor winograd_conv3x3(const at::Tensor& x_in, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, bool relu) {
  const at::Tensor x = x_in.contiguous(at::MemoryFormat::ChannelsLast);
  const int64_t c_out = weight.size(0);
  at::Tensor out = at::empty({x.size(0), c_out, x.size(2) - 2, x.size(3) - 2},
                             x.options().memory_format(at::MemoryFormat::ChannelsLast));
  const at::Tensor bias_values = bias ? bias->to(x.scalar_type()).contiguous() : at::zeros({c_out}, x.options());
  const at::Tensor weight_t = transform_weight(weight, false).transpose(1, 2);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "winograd_conv3x3", [&] {
    winograd_typed<scalar_t>(x, 0, weight_t, bias_values, relu, out);
  });
  return out;
}

at::Tensor winograd_conv3x3_data_grad(const at::Tensor& grad_in, const at::Tensor& weight) {
  const at::Tensor grad = grad_in.contiguous(at::MemoryFormat::ChannelsLast);
  const int64_t c_in = weight.size(1);
  at::Tensor grad_x = at::empty({grad.size(0), c_in, grad.size(2) + 2, grad.size(3) + 2},
                                grad.options().memory_format(at::MemoryFormat::ChannelsLast));
  // The full convolution with the weights turned by 180 degrees and C_in, C_out swapped.
  const at::Tensor weight_t = transform_weight(weight, true);
  const at::Tensor no_bias = at::zeros({c_in}, grad.options());
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "winograd_conv3x3_data_grad", [&] {
    winograd_typed<scalar_t>(grad, 2, weight_t, no_bias, false, grad_x);
  });
  return grad_x;
}

at::Tensor winograd_conv3x3_weight_grad(const at::Tensor& grad_in, const at::Tensor& x_in) {
  const at::Tensor grad = grad_in.contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor x = x_in.contiguous(at::MemoryFormat::ChannelsLast);
  const int64_t c_in = x.size(1), c_out = grad.size(1);
  at::Tensor grad_weight_t = at::empty({kPoints, c_out, c_in}, x.options());
  at::Tensor grad_weight = at::empty({c_out, c_in, 3, 3}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "winograd_conv3x3_weight_grad", [&] {
    winograd_weight_grad_typed<scalar_t>(grad, x, grad_weight_t);
    // Back from the transform domain, output channel by output channel.
    const scalar_t* du = grad_weight_t.const_data_ptr<scalar_t>();
    scalar_t* g = grad_weight.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, c_out, 1, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> scratch(3 * kTile * c_in);
      scalar_t* taps[9];
      for (int64_t o = begin; o < end; ++o) {
        for (int k = 0; k < 9; ++k) taps[k] = g + (o * 9 + k) * c_in;
        untransform_filters<scalar_t>(du + o * c_in, c_out * c_in, c_in, scratch.data(), taps);
      }
    });
  });
  return grad_weight;
}

}  // namespace unet_fast
