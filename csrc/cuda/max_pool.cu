// CUDA kernels of max_pool2x2, with the CPU kernels' per-window math (csrc/common/max_pool.h)
// in the accumulation type: a thread per output element, walking the output in its memory
// order (csrc/common/box.h). No torch headers; binding in max_pool_launch.cpp.
#include "../common/max_pool.h"
#include "device_helpers.cuh"
#include "max_pool.cuh"

namespace unet_fast {
namespace {

// The output element at position `i` of the walk over `ob`, and its window's top left.
template <bool kChannelsFastest, typename index_t>
struct Window {
  index_t at[4], top_left[4];

  __device__ Window(const Box4& ob, index_t i) {
    coordinates_of_linear<kChannelsFastest>(ob, i, at);
    top_left[0] = at[0];
    top_left[1] = at[1];
    top_left[2] = 2 * at[2];
    top_left[3] = 2 * at[3];
  }
};

template <typename scalar_t, typename acc_t, bool kChannelsFastest, typename index_t>
__global__ void max_pool_kernel(const scalar_t* x, Box4 xb, scalar_t* out, Box4 ob, int64_t numel) {
  const int64_t step = int64_t(blockDim.x) * gridDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < numel; i += step) {
    const Window<kChannelsFastest, index_t> w(ob, index_t(i));
    const scalar_t* a = x + offset_in(xb, w.top_left);
    const acc_t m = max_of_window(widen<acc_t>(a[0]), widen<acc_t>(a[xb.stride[3]]),
                                  widen<acc_t>(a[xb.stride[2]]), widen<acc_t>(a[xb.stride[2] + xb.stride[3]]));
    out[offset_in(ob, w.at)] = narrow_to<scalar_t>(m);
  }
}

template <typename scalar_t, typename acc_t, bool kChannelsFastest, typename index_t>
__global__ void max_pool_backward_kernel(const scalar_t* grad, Box4 gb, const scalar_t* x, Box4 xb,
                                         const scalar_t* out, Box4 ob, scalar_t* grad_x, Box4 gxb,
                                         int64_t numel) {
  const int64_t step = int64_t(blockDim.x) * gridDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < numel; i += step) {
    const Window<kChannelsFastest, index_t> w(ob, index_t(i));
    const scalar_t* a = x + offset_in(xb, w.top_left);
    const int chosen = argmax_of_window(widen<acc_t>(a[0]), widen<acc_t>(a[xb.stride[3]]),
                                        widen<acc_t>(a[xb.stride[2]]), widen<acc_t>(a[xb.stride[2] + xb.stride[3]]),
                                        widen<acc_t>(out[offset_in(ob, w.at)]));
    const acc_t g = widen<acc_t>(grad[offset_in(gb, w.at)]);
    scalar_t* dst = grad_x + offset_in(gxb, w.top_left);
    dst[0] = narrow_to<scalar_t>(chosen == 0 ? g : acc_t(0));
    dst[gxb.stride[3]] = narrow_to<scalar_t>(chosen == 1 ? g : acc_t(0));
    dst[gxb.stride[2]] = narrow_to<scalar_t>(chosen == 2 ? g : acc_t(0));
    dst[gxb.stride[2] + gxb.stride[3]] = narrow_to<scalar_t>(chosen == 3 ? g : acc_t(0));
  }
}

int64_t numel_of(const Box4& box) { return box.size[0] * box.size[1] * box.size[2] * box.size[3]; }

template <typename scalar_t, typename acc_t>
cudaError_t forward_typed(const void* x, const Box4& xb, void* out, const Box4& ob, cudaStream_t stream) {
  const int64_t numel = numel_of(ob);
  if (numel == 0) return cudaSuccess;
  return with_walk(ob, fits_int32(xb) && fits_int32(ob), [&](auto fastest, auto index) {
    using index_t = typename decltype(index)::type;
    constexpr bool kChannelsFastest = decltype(fastest)::value;
    max_pool_kernel<scalar_t, acc_t, kChannelsFastest, index_t><<<grid_for(numel), kThreads, 0, stream>>>(
        static_cast<const scalar_t*>(x), xb, static_cast<scalar_t*>(out), ob, numel);
    return cudaGetLastError();
  });
}

template <typename scalar_t, typename acc_t>
cudaError_t backward_typed(const void* grad, const Box4& gb, const void* x, const Box4& xb, const void* out,
                           const Box4& ob, void* grad_x, const Box4& gxb, cudaStream_t stream) {
  const int64_t numel = numel_of(ob);
  if (numel == 0) return cudaSuccess;
  const bool narrow = fits_int32(gb) && fits_int32(xb) && fits_int32(ob) && fits_int32(gxb);
  return with_walk(ob, narrow, [&](auto fastest, auto index) {
    using index_t = typename decltype(index)::type;
    constexpr bool kChannelsFastest = decltype(fastest)::value;
    max_pool_backward_kernel<scalar_t, acc_t, kChannelsFastest, index_t><<<grid_for(numel), kThreads, 0, stream>>>(
        static_cast<const scalar_t*>(grad), gb, static_cast<const scalar_t*>(x), xb,
        static_cast<const scalar_t*>(out), ob, static_cast<scalar_t*>(grad_x), gxb, numel);
    return cudaGetLastError();
  });
}

}  // namespace

cudaError_t launch_max_pool(const void* x, const Box4& x_box, void* out, const Box4& out_box,
                            ElementType type, cudaStream_t stream) {
  switch (type) {
    case ElementType::kFloat: return forward_typed<float, float>(x, x_box, out, out_box, stream);
    case ElementType::kDouble: return forward_typed<double, double>(x, x_box, out, out_box, stream);
    case ElementType::kHalf: return forward_typed<__half, float>(x, x_box, out, out_box, stream);
    case ElementType::kBFloat16: return forward_typed<__nv_bfloat16, float>(x, x_box, out, out_box, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t launch_max_pool_backward(const void* grad_out, const Box4& grad_box, const void* x,
                                     const Box4& x_box, const void* out, const Box4& out_box,
                                     void* grad_x, const Box4& grad_x_box, ElementType type,
                                     cudaStream_t stream) {
  switch (type) {
    case ElementType::kFloat:
      return backward_typed<float, float>(grad_out, grad_box, x, x_box, out, out_box, grad_x, grad_x_box, stream);
    case ElementType::kDouble:
      return backward_typed<double, double>(grad_out, grad_box, x, x_box, out, out_box, grad_x, grad_x_box, stream);
    case ElementType::kHalf:
      return backward_typed<__half, float>(grad_out, grad_box, x, x_box, out, out_box, grad_x, grad_x_box, stream);
    case ElementType::kBFloat16:
      return backward_typed<__nv_bfloat16, float>(grad_out, grad_box, x, x_box, out, out_box, grad_x, grad_x_box, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace unet_fast
