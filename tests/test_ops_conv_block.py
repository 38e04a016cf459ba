"""conv3x3_block (an encoder block that recomputes its first convolution in backward) on every
backend against two F.conv2d + F.relu: values, every gradient (float64 gradcheck), what it
keeps for backward, torch.compile, autocast and bad inputs."""

import pytest
import torch
import torch.nn.functional as F

from unet_fast.ops import conv3x3_block

from conftest import backends_for

BACKENDS = backends_for("conv3x3_bias_relu")
TOL = dict(rtol=1e-4, atol=1e-4)


def make(n=2, c_in=3, side=10, c_mid=4, c_out=5, dtype=torch.float64, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    tensors = [
        torch.randn(n, c_in, side, side, generator=g, dtype=torch.float64),
        torch.randn(c_mid, c_in, 3, 3, generator=g, dtype=torch.float64) / (3 * c_in**0.5),
        torch.randn(c_mid, generator=g, dtype=torch.float64) * 0.1 + 0.05,
        torch.randn(c_out, c_mid, 3, 3, generator=g, dtype=torch.float64) / (3 * c_mid**0.5),
        torch.randn(c_out, generator=g, dtype=torch.float64) * 0.1 + 0.05,
    ]
    return [t.to(dtype=dtype, device=device) for t in tensors]


def expected(x, w1, b1, w2, b2, final_relu):
    out = F.conv2d(F.relu(F.conv2d(x, w1, b1)), w2, b2)
    return F.relu(out) if final_relu else out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("final_relu", [False, True])
def test_values_and_gradients_equal_the_composite(backend, final_relu, device):
    tensors = make(dtype=torch.float32, device=device)
    grad = torch.randn(2, 5, 6, 6, device=device)
    results = []
    for fn in (lambda *t: conv3x3_block(*t, final_relu, backend=backend), lambda *t: expected(*t, final_relu)):
        leaves = [t.detach().clone().requires_grad_() for t in tensors]
        out = fn(*leaves)
        out.backward(grad)
        results.append([out.detach()] + [t.grad for t in leaves])
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, **TOL)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("final_relu", [False, True])
def test_gradcheck_and_gradgradcheck_float64(backend, final_relu, device):
    args = [t.requires_grad_() for t in make(n=1, c_in=2, side=7, c_mid=3, c_out=2, device=device)]
    fn = lambda *t: conv3x3_block(*t, final_relu, backend=backend)  # noqa: E731
    assert torch.autograd.gradcheck(fn, args, fast_mode=backend == "triton")
    if backend != "triton":  # the interpreter takes ~40 s here; the Triton conv's is checked in test_ops_conv.py
        assert torch.autograd.gradgradcheck(fn, args)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "torch"])
def test_keeps_only_input_output_and_parameters(backend, device):
    x, w1, b1, w2, b2 = make(device=device)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(tuple(t.shape)) or t, lambda t: t):
        conv3x3_block(x, w1.requires_grad_(), b1, w2, b2, backend=backend)
    assert (2, 4, 8, 8) not in saved  # the first convolution's output
    assert tuple(x.shape) in saved and (2, 5, 6, 6) in saved


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "torch"])
def test_wide_blocks_keep_the_first_output_instead_of_recomputing_it(backend, device, monkeypatch):
    from unet_fast.ops import conv_block

    monkeypatch.setattr(conv_block, "KEEP_FROM_CHANNELS", 3)  # make's x has 3 channels
    x, w1, b1, w2, b2 = make(device=device)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(tuple(t.shape)) or t, lambda t: t):
        out = conv3x3_block(x, w1.requires_grad_(), b1, w2, b2, True, backend=backend)
    assert (2, 4, 8, 8) in saved
    monkeypatch.setattr(conv_block, "forward_on", None)  # backward must not compute it again
    out.sum().backward()
    want = torch.autograd.grad(expected(x, w1, b1, w2, b2, True).sum(), w1)[0]
    torch.testing.assert_close(w1.grad, want, **TOL)


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_fullgraph(backend, device):
    x, w1, b1, w2, b2 = make(dtype=torch.float32, device=device)
    w1.requires_grad_()
    fn = lambda x, w1: conv3x3_block(x, w1, b1, w2, b2, backend=backend)  # noqa: E731
    got = torch.compile(fn, fullgraph=True)(x, w1)
    (grad_compiled,) = torch.autograd.grad(got.sum(), w1)
    want = fn(x, w1)
    (grad_eager,) = torch.autograd.grad(want.sum(), w1)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(grad_compiled, grad_eager)


@pytest.mark.parametrize("backend", BACKENDS)
def test_autocast_runs_in_bfloat16(backend, device):
    tensors = make(dtype=torch.float32, device=device)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        out = conv3x3_block(*tensors, backend=backend)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected(*tensors, False), rtol=3e-2, atol=3e-2)


@pytest.mark.parametrize(
    "change,match",
    [
        (lambda t: t.__setitem__(3, torch.randn(5, 3, 3, 3)), "weight takes 3 input channels but the first convolution's output has 4"),
        (lambda t: t.__setitem__(0, torch.randn(2, 3, 4, 4)), r"the first convolution's output must be at least 3x3"),
        (lambda t: t.__setitem__(1, torch.randn(4, 2, 3, 3)), "weight takes 2 input channels but x has 3"),
    ],
)
def test_bad_inputs_raise_clear_errors(change, match):
    tensors = make(dtype=torch.float32)
    change(tensors)
    with pytest.raises(ValueError, match=match):
        conv3x3_block(*tensors)
