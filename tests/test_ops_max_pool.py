"""max_pool2x2 on every backend against F.max_pool2d: values and gradients exactly (also with
ties and odd sizes), float64 gradcheck, NaN, layouts, memory kept for backward, opcheck,
torch.compile and bad inputs; max_pool2x2_and_crop against the pool and a slice of x, and the
memory its backward holds."""

import pytest
import torch
import torch.nn.functional as F

from unet_fast.bench import peak_memory_mb
from unet_fast.ops import crop_concat, max_pool2x2, max_pool2x2_and_crop

from conftest import backends_for

BACKENDS = backends_for("max_pool2x2")
CUSTOM_OPS = {
    "cpu": torch.ops.unet_fast.max_pool2x2,
    "cuda": torch.ops.unet_fast.max_pool2x2,
    "triton": torch.ops.unet_fast.max_pool2x2_triton,
}
SHAPES = [(2, 3, 8, 8), (1, 2, 7, 9), (1, 1, 2, 2), (2, 5, 3, 6)]


def pooled_and_grad(x, grad, **kwargs):
    x = x.detach().clone().requires_grad_()
    out = max_pool2x2(x, **kwargs) if kwargs else F.max_pool2d(x, 2)
    out.backward(grad)
    return out.detach(), x.grad


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("shape", SHAPES)
def test_values_and_gradient_equal_f_max_pool2d(backend, dtype, layout, shape, device):
    x = torch.randn(shape, device=device).to(dtype).contiguous(memory_format=layout)
    grad = torch.randn(shape[0], shape[1], shape[2] // 2, shape[3] // 2, device=device).to(dtype)
    out, grad_x = pooled_and_grad(x, grad, backend=backend)
    want_out, want_grad = pooled_and_grad(x, grad)
    torch.testing.assert_close(out, want_out, rtol=0, atol=0)
    torch.testing.assert_close(grad_x, want_grad, rtol=0, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_send_the_gradient_to_the_first_maximum(backend, device):
    x = torch.tensor([[[[1.0, 1.0, 0.0, 2.0], [1.0, 0.0, 2.0, 2.0]]]], device=device)
    grad = torch.tensor([[[[5.0, 7.0]]]], device=device)
    out, grad_x = pooled_and_grad(x, grad, backend=backend)
    assert out.tolist() == [[[[1.0, 2.0]]]]
    assert grad_x.tolist() == [[[[5.0, 0.0, 0.0, 7.0], [0.0, 0.0, 0.0, 0.0]]]]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ties_and_nan_in_many_channels_last_channels(backend, dtype, device):
    # 37 channels: the CPU kernel's vectorized channel loop and its remainder. Values of a few
    # levels tie often; NaNs, one at most a window (with more, PyTorch sends the gradient to
    # the last, we to the first), make some windows NaN.
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 3, (2, 37, 6, 8), generator=g).to(dtype)
    nan = torch.rand(2, 37, 3, 4, generator=g) < 0.2
    x[:, :, 1::2, ::2][nan] = float("nan")
    x = x.to(device).contiguous(memory_format=torch.channels_last)
    grad = torch.randn(2, 37, 3, 4, generator=g).to(dtype).to(device).contiguous(memory_format=torch.channels_last)
    out, grad_x = pooled_and_grad(x, grad, backend=backend)
    want_out, want_grad = pooled_and_grad(x, grad)
    assert out.isnan().any()
    torch.testing.assert_close(out, want_out, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(grad_x, want_grad, rtol=0, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_propagates(backend, device):
    x = torch.zeros(1, 1, 2, 4, device=device)
    x[0, 0, 1, 0] = float("nan")
    out = max_pool2x2(x, backend=backend)
    assert torch.isnan(out[0, 0, 0, 0]) and out[0, 0, 0, 1] == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_and_gradgradcheck_float64(backend, device):
    x = torch.randn(2, 3, 6, 5, dtype=torch.float64, device=device, requires_grad=True)
    fn = lambda x: max_pool2x2(x, backend=backend)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,), fast_mode=backend == "triton")
    assert torch.autograd.gradgradcheck(fn, (x,), fast_mode=backend == "triton")


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "torch"])
def test_keeps_no_indices_for_backward(backend, device):
    x = torch.randn(1, 4, 8, 8, device=device, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.dtype) or t, lambda t: t):
        max_pool2x2(x, backend=backend)
    assert saved and torch.int64 not in saved


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b in CUSTOM_OPS])
def test_opcheck(backend, device):
    x = torch.randn(2, 3, 7, 6, device=device, requires_grad=True)
    torch.library.opcheck(CUSTOM_OPS[backend], (x,))


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_fullgraph(backend, device):
    x = torch.randn(2, 3, 8, 8, device=device, requires_grad=True)
    fn = lambda x: max_pool2x2(x, backend=backend).sin().sum()  # noqa: E731
    (grad_compiled,) = torch.autograd.grad(torch.compile(fn, fullgraph=True)(x), x)
    (grad_eager,) = torch.autograd.grad(fn(x), x)
    torch.testing.assert_close(grad_compiled, grad_eager)


@pytest.mark.parametrize(
    "x,error,match",
    [
        (torch.randn(3, 8, 8), ValueError, "x must be 4-D"),
        (torch.randn(1, 1, 1, 8), ValueError, r"x must be at least 2x2 to pool, got \(1, 8\)"),
        (torch.zeros(1, 1, 4, 4, dtype=torch.long), TypeError, "x must have dtype"),
    ],
)
def test_bad_inputs_raise_clear_errors(x, error, match):
    with pytest.raises(error, match=match):
        max_pool2x2(x)


def pool_and_window_grads(x, size, grads, pool_and_crop):
    x = x.detach().clone().requires_grad_()
    pooled, window = pool_and_crop(x, size)
    outputs, wanted = zip(*[(out, grad) for out, grad in zip((pooled, window), grads) if grad is not None])
    torch.autograd.backward(outputs, wanted)
    return pooled.detach(), window.detach(), x.grad


def pool_and_slice(x, size):
    top, left = (x.shape[2] - size[0]) // 2, (x.shape[3] - size[1]) // 2
    return F.max_pool2d(x, 2), x[:, :, top : top + size[0], left : left + size[1]]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("which", ["both", "pooled", "window"])
def test_pool_and_crop_equal_the_pool_and_a_slice(backend, dtype, layout, which, device):
    x = torch.randn(2, 3, 12, 10, device=device).to(dtype).contiguous(memory_format=layout)
    size = (6, 4)
    grads = [torch.randn(2, 3, 6, 5, device=device).to(dtype) if which != "window" else None,
             torch.randn(2, 3, *size, device=device).to(dtype) if which != "pooled" else None]
    got = pool_and_window_grads(x, size, grads, lambda x, size: max_pool2x2_and_crop(x, size, backend=backend))
    want = pool_and_window_grads(x, size, grads, pool_and_slice)
    for ours, theirs in zip(got, want):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    assert got[1].stride() == want[1].stride()  # the window is a view of x


@pytest.mark.parametrize("backend", BACKENDS)
def test_pool_and_crop_gradcheck_and_gradgradcheck_float64(backend, device):
    x = torch.randn(1, 2, 8, 7, dtype=torch.float64, device=device, requires_grad=True)
    fn = lambda x: max_pool2x2_and_crop(x, (4, 3), backend=backend)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,), fast_mode=backend == "triton")
    assert torch.autograd.gradgradcheck(fn, (x,), fast_mode=backend == "triton")


@pytest.mark.parametrize("backend", BACKENDS)
def test_pool_and_crop_is_one_node(backend, device):
    pooled, window = max_pool2x2_and_crop(torch.randn(1, 2, 8, 8, device=device, requires_grad=True), (4, 4),
                                          backend=backend)
    assert pooled.grad_fn is window.grad_fn


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_window_gradient_waits_at_the_window_size(backend, device):
    """A decoder's join reads the window; its gradient arrives first and waits through the
    pooled branch's backward, held by the node at the window's size (16 KiB here, where a join
    of x's whole would give back 4 MiB): the backward's peak is that of the same graph without
    the join's gradient, plus no more than a window's worth."""
    x = torch.randn(1, 16, 256, 256, device=device, requires_grad=True)
    up = torch.randn(1, 4, 32, 32, device=device)

    def backward(skip_gradient):
        pooled, window = max_pool2x2_and_crop(x, (32, 32), backend=backend)
        late = pooled.repeat(1, 1, 4, 4)  # 16 MiB
        for _ in range(3):  # created before the join, so run after it, while its gradient waits
            late = late.exp().sqrt()
        skip = window if skip_gradient else window.detach()
        loss = late.sum() + (crop_concat(up, skip, backend=backend) * 2).sum()
        return lambda: torch.autograd.grad(loss, x, retain_graph=True)

    assert peak_memory_mb(backward(True), device) <= peak_memory_mb(backward(False), device) + 0.5


@pytest.mark.parametrize("backend", BACKENDS)
def test_pool_and_crop_torch_compile_fullgraph(backend, device):
    x = torch.randn(1, 3, 8, 8, device=device, requires_grad=True)

    def fn(x):
        pooled, window = max_pool2x2_and_crop(x, (4, 6), backend=backend)
        return pooled.sin().sum() + window.cos().sum()

    (grad_compiled,) = torch.autograd.grad(torch.compile(fn, fullgraph=True)(x), x)
    (grad_eager,) = torch.autograd.grad(fn(x), x)
    torch.testing.assert_close(grad_compiled, grad_eager)


@pytest.mark.parametrize(
    "size,error,match",
    [
        ((5, 4), ValueError, r"size must be positive and at most x's \(4, 4\), got \(5, 4\)"),
        ((0, 2), ValueError, "size must be positive"),
        (4, TypeError, "size must be a pair of ints"),
        ((2.0, 2), TypeError, "size must be a pair of ints"),
    ],
)
def test_pool_and_crop_bad_sizes_raise_clear_errors(size, error, match):
    with pytest.raises(error, match=match):
        max_pool2x2_and_crop(torch.randn(1, 1, 4, 4), size)
