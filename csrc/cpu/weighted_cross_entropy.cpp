// CPU kernel of the pixel-weighted softmax cross-entropy: one pass over the logits computes
// the loss and the gradient (for grad_output = 1) together, in blocks of pixels that stay in
// cache while the channels are swept; for 'mean', a cheap first pass over the pixel weights
// finds the denominator (over the labels too, with class weights). Every loop is branch-free
// so it vectorises, and the block functions are built for AVX-512, AVX2 and baseline x86-64,
// chosen at load time. Loss partial sums are added in a fixed order, so results do not depend
// on the thread count.
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "../common/fast_math.h"
#include "../common/weighted_cross_entropy.h"
#include "../weighted_cross_entropy.h"
#include "buffer_pool.h"
#include "dynamic_parallel.h"
#include "target_clones.h"

namespace unet_fast {
namespace {

constexpr int64_t kBlock = 1024;  // pixels per block

// x where keep, else +0, by bit mask: a select the vectoriser takes even when x came from
// arithmetic, and one that does not turn 0 * NaN into NaN.
template <typename T>
inline T keep_or_zero(bool keep, T x) {
  using Bits = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
  Bits bits;
  std::memcpy(&bits, &x, sizeof bits);
  bits &= Bits(0) - Bits(keep);
  std::memcpy(&x, &bits, sizeof bits);
  return x;
}

struct BlockArgs {
  int64_t count, classes, hw, ignore_index;
  const float* weight;        // this block's pixel weights, or null
  const float* class_weight;  // (C,), or null
};

// Labels of a block as int32 (-1 where ignored) and each pixel's total weight v (0 where
// ignored). Returns false if a label is neither in [0, C) nor ignore_index.
template <typename label_t, typename acc_t>
UNET_FAST_CPU_CLONES bool block_labels(const BlockArgs& a, const label_t* target, int32_t* label,
                                       acc_t* v) {
  int32_t bad = 0;
  for (int64_t p = 0; p < a.count; ++p) {
    const int64_t l = int64_t(target[p]);
    const bool ignored = l == a.ignore_index;
    bad |= int32_t(!label_is_valid(l, a.ignore_index, a.classes));
    label[p] = ignored ? int32_t(-1) : int32_t(l);
  }
  for (int64_t p = 0; p < a.count; ++p) v[p] = label[p] >= 0 ? acc_t(1) : acc_t(0);
  if (a.weight) {
    for (int64_t p = 0; p < a.count; ++p) v[p] *= acc_t(a.weight[p]);
  }
  if (a.class_weight) {
    acc_t chosen[kBlock];
    std::fill_n(chosen, a.count, acc_t(0));
    for (int64_t c = 0; c < a.classes; ++c) {
      const acc_t cw = acc_t(a.class_weight[c]);
      for (int64_t p = 0; p < a.count; ++p) chosen[p] = label[p] == c ? cw : chosen[p];
    }
    for (int64_t p = 0; p < a.count; ++p) v[p] *= chosen[p];
  }
  return bad == 0;
}

// Loss (summed, and per pixel into loss_map if set) and gradient (into grad if set) of one
// block of pixels; `scale` multiplies the gradient (1 / sum v for 'mean').
// `shifted` has room for classes x kBlock values: exp(z - max), kept for the gradient. Pointers
// are __restrict and rows are indexed per class so that every loop vectorises.
template <typename scalar_t, typename acc_t>
UNET_FAST_CPU_CLONES acc_t block_loss(const BlockArgs& a, const scalar_t* __restrict z,
                                      const int32_t* __restrict label, const acc_t* __restrict v,
                                      acc_t scale, scalar_t* __restrict loss_map,
                                      scalar_t* __restrict grad, acc_t* __restrict shifted) {
  acc_t max[kBlock], sum[kBlock], z_target[kBlock], loss[kBlock];
  const int64_t n = a.count, hw = a.hw;
  const int32_t classes = int32_t(a.classes);
  std::fill_n(max, n, -std::numeric_limits<acc_t>::infinity());
  std::fill_n(z_target, n, acc_t(0));
  for (int32_t c = 0; c < classes; ++c) {
    const scalar_t* __restrict zc = z + c * hw;
    for (int64_t p = 0; p < n; ++p) {
      const acc_t x = acc_t(zc[p]);
      max[p] = max_keep_nan(max[p], x);
      z_target[p] = label[p] == c ? x : z_target[p];
    }
  }
  if (classes == 2) {
    // One exp per pixel: the larger logit's is 1 (both are 1 at a tie; NaN stays NaN).
    const scalar_t* __restrict z1 = z + hw;
    acc_t* __restrict e0 = shifted;
    acc_t* __restrict e1 = shifted + kBlock;
    for (int64_t p = 0; p < n; ++p) {
      const acc_t x0 = acc_t(z[p]), x1 = acc_t(z1[p]);
      const acc_t smaller = exp_nonpositive(-std::abs(x0 - x1));
      e0[p] = x0 >= x1 ? acc_t(1) : smaller;
      e1[p] = x1 > x0 ? acc_t(1) : smaller;
      sum[p] = e0[p] + e1[p];
    }
  } else {
    std::fill_n(sum, n, acc_t(0));
    for (int32_t c = 0; c < classes; ++c) {
      const scalar_t* __restrict zc = z + c * hw;
      acc_t* __restrict e = shifted + c * kBlock;
      for (int64_t p = 0; p < n; ++p) {
        e[p] = exp_nonpositive(acc_t(zc[p]) - max[p]);
        sum[p] += e[p];
      }
    }
  }
  acc_t total = 0;
#pragma omp simd reduction(+ : total)
  for (int64_t p = 0; p < n; ++p) {
    // (max - z_t) + log sum rather than logsumexp - z_t: no cancellation of large numbers.
    loss[p] = keep_or_zero(label[p] >= 0, v[p] * ((max[p] - z_target[p]) + log_at_least_one(sum[p])));
    total += loss[p];
  }
  if (loss_map) {
    for (int64_t p = 0; p < n; ++p) loss_map[p] = scalar_t(loss[p]);
  }
  if (grad) {
    for (int64_t p = 0; p < n; ++p) {
      sum[p] = acc_t(1) / sum[p];  // now 1 / sum
      loss[p] = v[p] * scale;      // now the gradient scale
    }
    for (int32_t c = 0; c < classes; ++c) {
      const acc_t* __restrict e = shifted + c * kBlock;
      scalar_t* __restrict gc = grad + c * hw;
      for (int64_t p = 0; p < n; ++p) {
        gc[p] = scalar_t(softmax_grad(e[p], sum[p], label[p] == c ? acc_t(1) : acc_t(0), loss[p]));
      }
    }
  }
  return total;
}

// Sum of a block's pixel weights, in one fixed order.
template <typename acc_t>
UNET_FAST_CPU_CLONES double block_sum(const acc_t* v, int64_t count) {
  acc_t sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t p = 0; p < count; ++p) sum += v[p];
  return double(sum);
}

double sum_in_order(const std::vector<double>& partials) {
  double total = 0.0;
  for (double p : partials) total += p;
  return total;
}

// Calls fn(image, first pixel, pixel count, block index) for every block, in parallel.
template <typename Fn>
void for_each_block(int64_t images, int64_t hw, Fn fn) {
  const int64_t blocks_per_image = (hw + kBlock - 1) / kBlock;
  parallel_pieces(0, images * blocks_per_image, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t image = b / blocks_per_image, first = (b % blocks_per_image) * kBlock;
      fn(image, first, std::min(kBlock, hw - first), b);
    }
  });
}

template <typename scalar_t, typename label_t>
void forward_typed(const at::Tensor& logits, const at::Tensor& target, const float* weight,
                   const float* class_weight, int64_t ignore_index, Reduction reduction,
                   at::Tensor& loss, at::Tensor& grad) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t images = logits.size(0), classes = logits.size(1);
  const int64_t hw = logits.size(2) * logits.size(3);
  const scalar_t* z = logits.const_data_ptr<scalar_t>();
  const label_t* labels = target.const_data_ptr<label_t>();
  scalar_t* g = grad.numel() > 0 ? grad.mutable_data_ptr<scalar_t>() : nullptr;
  scalar_t* loss_map = reduction == Reduction::kNone ? loss.mutable_data_ptr<scalar_t>() : nullptr;
  const int64_t blocks = images * ((hw + kBlock - 1) / kBlock);
  const auto args_for = [&](int64_t image, int64_t first, int64_t count) {
    return BlockArgs{count, classes, hw, ignore_index,
                     weight ? weight + image * hw + first : nullptr, class_weight};
  };

  // The mean's denominator, sum v, is needed before any gradient is written. Without class
  // weights it is the sum of the pixel weights (or the pixel count) unless pixels are ignored:
  // assume none are, which spares a pass over the labels, and check below.
  const bool assume_none_ignored = class_weight == nullptr;
  std::vector<double> assumed_partial(blocks, 0.0);
  if (reduction == Reduction::kMean && assume_none_ignored && weight) {
    for_each_block(images, hw, [&](int64_t image, int64_t first, int64_t count, int64_t b) {
      acc_t v[kBlock];
      const float* w = weight + image * hw + first;
      for (int64_t p = 0; p < count; ++p) v[p] = acc_t(w[p]);
      assumed_partial[b] = block_sum(v, count);
    });
  } else if (reduction == Reduction::kMean && assume_none_ignored) {
    for_each_block(images, hw, [&](int64_t, int64_t, int64_t count, int64_t b) { assumed_partial[b] = double(count); });
  } else if (reduction == Reduction::kMean) {
    for_each_block(images, hw, [&](int64_t image, int64_t first, int64_t count, int64_t b) {
      int32_t label[kBlock];
      acc_t v[kBlock];
      block_labels(args_for(image, first, count), labels + image * hw + first, label, v);
      assumed_partial[b] = block_sum(v, count);
    });
  }
  const double assumed_sum = sum_in_order(assumed_partial);
  const acc_t scale = reduction == Reduction::kMean ? acc_t(1.0 / assumed_sum) : acc_t(1);

  // The logits, once; labels checked and sum v computed exactly on the way.
  std::vector<double> loss_partial(blocks, 0.0), weight_partial(blocks, 0.0);
  std::atomic<bool> all_valid{true};
  for_each_block(images, hw, [&](int64_t image, int64_t first, int64_t count, int64_t b) {
    int32_t label[kBlock];
    acc_t v[kBlock];
    const BlockArgs args = args_for(image, first, count);
    if (!block_labels(args, labels + image * hw + first, label, v)) all_valid.store(false);
    weight_partial[b] = block_sum(v, count);
    const int64_t offset = image * classes * hw + first;
    thread_local std::vector<acc_t> shifted;
    shifted.resize(classes * kBlock);
    loss_partial[b] = double(block_loss(args, z + offset, label, v, scale,
                                        loss_map ? loss_map + image * hw + first : nullptr,
                                        g ? g + offset : nullptr, shifted.data()));
  });
  if (!all_valid.load()) {
    const at::Tensor bad = target.ne(ignore_index).logical_and(target.lt(0).logical_or(target.ge(classes)));
    const int64_t value = target.masked_select(bad).flatten()[0].item<int64_t>();
    TORCH_CHECK(false, "weighted_softmax_cross_entropy: target holds label ", value,
                "; labels must be in [0, ", classes, ") or ignore_index (", ignore_index, ")");
  }
  const double weight_sum = sum_in_order(weight_partial);
  if (reduction == Reduction::kMean && g && weight_sum != assumed_sum) {
    grad.mul_(assumed_sum / weight_sum);  // some pixels were ignored after all
  }
  if (reduction != Reduction::kNone) {
    const double total = sum_in_order(loss_partial);
    loss.fill_(reduction == Reduction::kMean ? total / weight_sum : total);
  }
}

std::tuple<at::Tensor, at::Tensor> weighted_softmax_cross_entropy_cpu(
    const at::Tensor& logits_in, const at::Tensor& target_in,
    const std::optional<at::Tensor>& weight_in, const std::optional<at::Tensor>& class_weight_in,
    int64_t ignore_index, c10::string_view reduction_name, bool compute_grad) {
  const PooledAllocations pooled;
  const Reduction reduction = parse_reduction(reduction_name);
  const auto [logits, target, weight, class_weight] = prepare_weighted_cross_entropy_inputs(
      logits_in, target_in, weight_in, class_weight_in, target_in.scalar_type());
  auto [loss, grad] = allocate_weighted_cross_entropy_outputs(logits, reduction, compute_grad);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "wce_cpu", [&] {
    using scalar_t_ = scalar_t;
    AT_DISPATCH_INTEGRAL_TYPES(target.scalar_type(), "wce_cpu_labels", [&] {
      forward_typed<scalar_t_, scalar_t>(
          logits, target, weight.defined() ? weight.const_data_ptr<float>() : nullptr,
          class_weight.defined() ? class_weight.const_data_ptr<float>() : nullptr, ignore_index,
          reduction, loss, grad);
    });
  });
  return {loss, grad};
}

}  // namespace

TORCH_LIBRARY_IMPL(unet_fast, CPU, m) {
  m.impl("weighted_softmax_cross_entropy", &weighted_softmax_cross_entropy_cpu);
}

}  // namespace unet_fast
