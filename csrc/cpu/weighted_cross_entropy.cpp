// CPU kernel of the pixel-weighted softmax cross-entropy: one pass over the logits computes
// the loss and the gradient (for grad_output = 1) together, in blocks of pixels that stay in
// cache while the channels are swept; a cheap first pass over the labels finds the mean's
// denominator. Loss partial sums are added in a fixed order, so results do not depend on the
// thread count.
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <limits>
#include <vector>

#include "../common/fast_math.h"
#include "../common/weighted_cross_entropy.h"
#include "../weighted_cross_entropy.h"

namespace unet_fast {
namespace {

constexpr int64_t kBlock = 256;  // pixels per block

template <typename label_t>
double total_weight(const label_t* target, const float* weight, const float* class_weight,
                    int64_t pixels, int64_t ignore_index, int64_t classes) {
  const int64_t blocks = (pixels + kBlock - 1) / kBlock;
  std::vector<double> partial(blocks, 0.0);
  std::atomic<int64_t> bad_pixel{-1};
  at::parallel_for(0, blocks, 16, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      double sum = 0.0;
      for (int64_t i = b * kBlock, stop = std::min(pixels, i + kBlock); i < stop; ++i) {
        const int64_t label = int64_t(target[i]);
        if (!label_is_valid(label, ignore_index, classes)) {
          bad_pixel.store(i);
          continue;
        }
        sum += pixel_weight<double>(label, ignore_index, weight, i, class_weight);
      }
      partial[b] = sum;
    }
  });
  const int64_t bad = bad_pixel.load();
  TORCH_CHECK(bad < 0, "weighted_softmax_cross_entropy: target holds label ", int64_t(target[bad]),
              " at flat pixel ", bad, "; labels must be in [0, ", classes, ") or ignore_index (",
              ignore_index, ")");
  double sum = 0.0;
  for (double p : partial) sum += p;
  return sum;
}

template <typename scalar_t, typename label_t>
void forward_typed(const at::Tensor& logits, const at::Tensor& target, const float* weight,
                   const float* class_weight, int64_t ignore_index, Reduction reduction,
                   at::Tensor& loss, at::Tensor& grad) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t n_images = logits.size(0), classes = logits.size(1);
  const int64_t hw = logits.size(2) * logits.size(3);
  const scalar_t* z = logits.const_data_ptr<scalar_t>();
  const label_t* labels = target.const_data_ptr<label_t>();
  const bool want_grad = grad.defined() && grad.numel() > 0;
  scalar_t* g = want_grad ? grad.mutable_data_ptr<scalar_t>() : nullptr;
  scalar_t* loss_map = reduction == Reduction::kNone ? loss.mutable_data_ptr<scalar_t>() : nullptr;

  const double weight_sum =
      total_weight(labels, weight, class_weight, n_images * hw, ignore_index, classes);
  const acc_t scale = reduction == Reduction::kMean ? acc_t(1.0 / weight_sum) : acc_t(1);

  const int64_t blocks_per_image = (hw + kBlock - 1) / kBlock;
  const int64_t blocks = n_images * blocks_per_image;
  std::vector<double> partial(blocks, 0.0);
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    // Per block: exp(z - max) for every class, then per pixel max, sum, label, 1/sum and the
    // gradient scale. The math loops are branch-free so they vectorise; labels are handled in
    // one scalar pass per pixel.
    std::vector<acc_t> shifted(classes * kBlock);
    acc_t max[kBlock], sum[kBlock], inv_sum[kBlock], grad_scale[kBlock];
    int64_t label[kBlock];
    for (int64_t b = begin; b < end; ++b) {
      const int64_t image = b / blocks_per_image;
      const int64_t first = (b % blocks_per_image) * kBlock;
      const int64_t count = std::min(kBlock, hw - first);
      const scalar_t* zb = z + image * classes * hw + first;
      const label_t* tb = labels + image * hw + first;
      std::fill_n(max, count, -std::numeric_limits<acc_t>::infinity());
      for (int64_t c = 0; c < classes; ++c) {
        for (int64_t p = 0; p < count; ++p) max[p] = max_keep_nan(max[p], acc_t(zb[c * hw + p]));
      }
      std::fill_n(sum, count, acc_t(0));
      for (int64_t c = 0; c < classes; ++c) {
        acc_t* e = shifted.data() + c * kBlock;
        for (int64_t p = 0; p < count; ++p) {
          e[p] = exp_nonpositive(acc_t(zb[c * hw + p]) - max[p]);
          sum[p] += e[p];
        }
      }
      for (int64_t p = 0; p < count; ++p) {
        inv_sum[p] = acc_t(1) / sum[p];
        sum[p] = log_at_least_one(sum[p]);  // now log sum: ce = (max - z_t) + log sum, no cancellation
      }
      double block_loss = 0.0;
      for (int64_t p = 0; p < count; ++p) {
        const int64_t pixel = image * hw + first + p;
        label[p] = int64_t(tb[p]);
        const bool ignored = label[p] == ignore_index;
        const acc_t v = pixel_weight<acc_t>(label[p], ignore_index, weight, pixel, class_weight);
        const acc_t loss_p =
            ignored ? acc_t(0) : v * ((max[p] - acc_t(zb[label[p] * hw + p])) + sum[p]);
        if (loss_map) loss_map[pixel] = scalar_t(loss_p);
        block_loss += double(loss_p);
        grad_scale[p] = ignored ? acc_t(0) : v * scale;
      }
      partial[b] = block_loss;
      if (!g) continue;
      scalar_t* gb = g + image * classes * hw + first;
      for (int64_t c = 0; c < classes; ++c) {
        const acc_t* e = shifted.data() + c * kBlock;
        for (int64_t p = 0; p < count; ++p) {
          gb[c * hw + p] = scalar_t(softmax_grad(e[p], inv_sum[p], label[p] == c, grad_scale[p]));
        }
      }
    }
  });
  if (reduction != Reduction::kNone) {
    double total = 0.0;
    for (double p : partial) total += p;
    if (reduction == Reduction::kMean) total /= weight_sum;
    loss.fill_(total);
  }
}

std::tuple<at::Tensor, at::Tensor> weighted_softmax_cross_entropy_cpu(
    const at::Tensor& logits_in, const at::Tensor& target_in,
    const std::optional<at::Tensor>& weight_in, const std::optional<at::Tensor>& class_weight_in,
    int64_t ignore_index, c10::string_view reduction_name, bool compute_grad) {
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
