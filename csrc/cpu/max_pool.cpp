// CPU kernels of max_pool2x2: parallel over output pixels, the channel loop innermost (unit
// stride for channels_last tensors, the layout unet_fast's convolutions produce).
#include <torch/library.h>

#include <initializer_list>

#include "../common/max_pool.h"
#include "../max_pool.h"
#include "buffer_pool.h"
#include "convert.h"
#include "dynamic_parallel.h"
#include "target_clones.h"

namespace unet_fast {
namespace {

constexpr int64_t kPixelsPerTask = 16;

// Calls fn(n, oy, ox) for every output pixel, in parallel.
template <typename Fn>
void for_each_output_pixel(const at::Tensor& out, Fn fn) {
  const int64_t oh = out.size(2), ow = out.size(3);
  parallel_pieces(0, out.size(0) * oh * ow, kPixelsPerTask, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) fn(p / (oh * ow), p / ow % oh, p % ow);
  });
}

template <typename T>
void forward_typed(const at::Tensor& x, at::Tensor& out) {
  const Box4 xb = box_of(x), ob = box_of(out);
  const T* in = x.const_data_ptr<T>();
  T* o = out.mutable_data_ptr<T>();
  const int64_t channels = x.size(1), xc = xb.stride[1], oc = ob.stride[1];
  for_each_output_pixel(out, [&](int64_t n, int64_t oy, int64_t ox) {
    const T* a = in + box_offset(xb, n, 0, 2 * oy, 2 * ox);
    const T* c = a + xb.stride[2];
    T* dst = o + box_offset(ob, n, 0, oy, ox);
    const int64_t right = xb.stride[3];
    for (int64_t ch = 0; ch < channels; ++ch) {
      dst[ch * oc] = max_of_window(a[ch * xc], a[ch * xc + right], c[ch * xc], c[ch * xc + right]);
    }
  });
}

// The backward of one output pixel's windows over `channels` unit-strided channels: the
// gradient goes to the window element argmax_of_window picks (the first equal to the output, or
// the first NaN), computed as masks so that the loop vectorizes. in0/in1 (and dst0/dst1) are
// the window's two input rows, their right elements `right` further on.
template <typename T>
UNET_FAST_CPU_CLONES void window_grads(const T* in0, const T* in1, int64_t right, const T* out, const T* grad,
                                       T* dst0, T* dst1, int64_t dst_right, int64_t channels) {
  using A = at::opmath_type<T>;
#pragma omp simd
  for (int64_t c = 0; c < channels; ++c) {
    const A m = load_value(out + c), g = load_value(grad + c);
    const A v0 = load_value(in0 + c), v1 = load_value(in0 + c + right), v2 = load_value(in1 + c);
    // Bitwise, not short-circuit, so that no branch stops the loop from vectorizing.
    const bool first = (v0 == m) | (v0 != v0);
    const bool second = !first & ((v1 == m) | (v1 != v1));
    const bool third = !first & !second & ((v2 == m) | (v2 != v2));
    const bool fourth = !first & !second & !third;
    store_value(dst0 + c, first ? g : A(0));
    store_value(dst0 + c + dst_right, second ? g : A(0));
    store_value(dst1 + c, third ? g : A(0));
    store_value(dst1 + c + dst_right, fourth ? g : A(0));
  }
}

// Whether every tensor's channels lie next to each other (channels_last, as the U-Net runs).
bool channels_innermost(std::initializer_list<const at::Tensor*> tensors) {
  for (const at::Tensor* t : tensors) {
    if (t->size(1) > 1 && t->stride(1) != 1) return false;
  }
  return true;
}

template <typename T>
void backward_typed(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& out, at::Tensor& grad_x) {
  const Box4 gb = box_of(grad_out), xb = box_of(x), ob = box_of(out), gxb = box_of(grad_x);
  const T* g = grad_out.const_data_ptr<T>();
  const T* in = x.const_data_ptr<T>();
  const T* o = out.const_data_ptr<T>();
  T* gx = grad_x.mutable_data_ptr<T>();
  const int64_t channels = x.size(1);
  if (channels_innermost({&grad_out, &x, &out, &grad_x})) {
    for_each_output_pixel(out, [&](int64_t n, int64_t oy, int64_t ox) {
      const T* in0 = in + box_offset(xb, n, 0, 2 * oy, 2 * ox);
      T* dst0 = gx + box_offset(gxb, n, 0, 2 * oy, 2 * ox);
      window_grads(in0, in0 + xb.stride[2], xb.stride[3], o + box_offset(ob, n, 0, oy, ox),
                   g + box_offset(gb, n, 0, oy, ox), dst0, dst0 + gxb.stride[2], gxb.stride[3], channels);
    });
    return;
  }
  for_each_output_pixel(out, [&](int64_t n, int64_t oy, int64_t ox) {
    for (int64_t ch = 0; ch < channels; ++ch) {
      const T* a = in + box_offset(xb, n, ch, 2 * oy, 2 * ox);
      const T values[4] = {a[0], a[xb.stride[3]], a[xb.stride[2]], a[xb.stride[2] + xb.stride[3]]};
      const int chosen = argmax_of_window(values[0], values[1], values[2], values[3], o[box_offset(ob, n, ch, oy, ox)]);
      const T grad = g[box_offset(gb, n, ch, oy, ox)];
      T* dst = gx + box_offset(gxb, n, ch, 2 * oy, 2 * ox);
      dst[0] = chosen == 0 ? grad : T(0);
      dst[gxb.stride[3]] = chosen == 1 ? grad : T(0);
      dst[gxb.stride[2]] = chosen == 2 ? grad : T(0);
      dst[gxb.stride[2] + gxb.stride[3]] = chosen == 3 ? grad : T(0);
    }
  });
}

at::Tensor max_pool2x2_cpu(const at::Tensor& x) {
  check_max_pool_input(x);
  const PooledAllocations pooled;
  at::Tensor out = new_pooled(x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "max_pool2x2_cpu",
                                  [&] { forward_typed<scalar_t>(x, out); });
  return out;
}

at::Tensor max_pool2x2_backward_cpu(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& out) {
  check_max_pool_input(x);
  const PooledAllocations pooled;
  at::Tensor grad_x = new_pool_input_grad(x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "max_pool2x2_backward_cpu",
                                  [&] { backward_typed<scalar_t>(grad_out, x, out, grad_x); });
  return grad_x;
}

}  // namespace

TORCH_LIBRARY_IMPL(unet_fast, CPU, m) {
  m.impl("max_pool2x2", &max_pool2x2_cpu);
  m.impl("max_pool2x2_backward", &max_pool2x2_backward_cpu);
}

}  // namespace unet_fast
