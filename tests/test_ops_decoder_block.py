"""crop_concat_conv3x3_block (a decoder block whose second convolution takes over the join's
ReLU backward) on every backend against crop, cat and two F.conv2d: values, every gradient
(float64 gradcheck), equality with the two ops it replaces, what each node keeps, torch.compile,
autocast and bad inputs."""

import pytest
import torch
import torch.nn.functional as F

from unet_fast import reference
from unet_fast.ops import conv3x3_bias_relu, crop_concat_conv3x3, crop_concat_conv3x3_block

from conftest import backends_for

BACKENDS = backends_for("crop_concat_conv3x3")
TOL = dict(rtol=1e-4, atol=1e-4)
UP, SKIP, C_MID, C_OUT = (2, 3, 8, 8), (2, 2, 13, 12), 4, 5


def make(up_shape=UP, skip_shape=SKIP, dtype=torch.float64, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    c_in = up_shape[1] + skip_shape[1]
    tensors = [
        torch.randn(up_shape, generator=g, dtype=torch.float64),
        torch.randn(skip_shape, generator=g, dtype=torch.float64),
        torch.randn(C_MID, c_in, 3, 3, generator=g, dtype=torch.float64) / (3 * c_in**0.5),
        torch.randn(C_MID, generator=g, dtype=torch.float64) * 0.1 + 0.05,
        torch.randn(C_OUT, C_MID, 3, 3, generator=g, dtype=torch.float64) / (3 * C_MID**0.5),
        torch.randn(C_OUT, generator=g, dtype=torch.float64) * 0.1 + 0.05,
    ]
    return [t.to(dtype=dtype, device=device) for t in tensors]


def expected(up, skip, w1, b1, w2, b2, final_relu):
    joined = torch.cat([up, reference.center_crop(skip, up.shape[-2:])], 1)
    out = F.conv2d(F.relu(F.conv2d(joined, w1, b1)), w2, b2)
    return F.relu(out) if final_relu else out


def values_and_grads(fn, tensors, grad):
    leaves = [t.detach().clone().requires_grad_() for t in tensors]
    out = fn(*leaves)
    out.backward(grad)
    return [out.detach()] + [t.grad for t in leaves]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("final_relu", [False, True])
def test_values_and_gradients_equal_crop_cat_and_convs(backend, final_relu, device):
    tensors = make(dtype=torch.float32, device=device)
    grad = torch.randn(2, C_OUT, 4, 4, device=device)
    got = values_and_grads(lambda *t: crop_concat_conv3x3_block(*t, final_relu, backend=backend), tensors, grad)
    want = values_and_grads(lambda *t: expected(*t, final_relu), tensors, grad)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **TOL)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "torch"])
@pytest.mark.parametrize("final_relu", [False, True])
def test_equals_the_two_ops_it_replaces(backend, final_relu, device):
    """Moving the ReLU's backward from one node to the other changes no value: the same
    kernels on the same gradients."""
    tensors = make(dtype=torch.float32, device=device)
    grad = torch.randn(2, C_OUT, 4, 4, device=device)

    def two_ops(up, skip, w1, b1, w2, b2):
        inner = crop_concat_conv3x3(up, skip, w1, b1, True, backend=backend)
        return conv3x3_bias_relu(inner, w2, b2, final_relu, backend=backend)

    got = values_and_grads(lambda *t: crop_concat_conv3x3_block(*t, final_relu, backend=backend), tensors, grad)
    for g, w in zip(got, values_and_grads(two_ops, tensors, grad)):
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("final_relu", [False, True])
def test_gradcheck_and_gradgradcheck_float64(backend, final_relu, device):
    args = [t.requires_grad_() for t in make((1, 2, 5, 5), (1, 2, 8, 7), device=device)]
    fn = lambda *t: crop_concat_conv3x3_block(*t, final_relu, backend=backend)  # noqa: E731
    assert torch.autograd.gradcheck(fn, args, fast_mode=backend == "triton")
    if backend != "triton":  # the interpreter takes ~40 s here; the Triton conv's is checked in test_ops_conv.py
        assert torch.autograd.gradgradcheck(fn, args)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "torch"])
def test_the_join_keeps_neither_its_output_nor_a_mask(backend, device):
    up, skip, w1, b1, w2, b2 = make(dtype=torch.float32, device=device)
    out = crop_concat_conv3x3_block(up, skip, w1.requires_grad_(), b1, w2, b2, backend=backend)
    second = out.grad_fn
    join = second.next_functions[0][0]
    inner_shape = (2, C_MID, 6, 6)
    assert [tuple(t.shape) for t in join.saved_tensors] == [UP, SKIP, tuple(w1.shape)]
    assert [tuple(t.shape) for t in second.saved_tensors if t is not None][0] == inner_shape


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_fullgraph(backend, device):
    up, skip, w1, b1, w2, b2 = make(dtype=torch.float32, device=device)
    w1.requires_grad_()
    up.requires_grad_()
    fn = lambda up, w1: crop_concat_conv3x3_block(up, skip, w1, b1, w2, b2, backend=backend)  # noqa: E731
    got = torch.compile(fn, fullgraph=True)(up, w1)
    grads_compiled = torch.autograd.grad(got.sum(), (up, w1))
    want = fn(up, w1)
    grads_eager = torch.autograd.grad(want.sum(), (up, w1))
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(grads_compiled, grads_eager)


@pytest.mark.parametrize("backend", BACKENDS)
def test_autocast_runs_in_bfloat16(backend, device):
    tensors = make(dtype=torch.float32, device=device)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        out = crop_concat_conv3x3_block(*tensors, backend=backend)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected(*tensors, False), rtol=3e-2, atol=3e-2)


@pytest.mark.parametrize(
    "change,match",
    [
        (lambda t: t.__setitem__(4, torch.randn(C_OUT, 3, 3, 3)),
         "weight takes 3 input channels but the join's convolution output has 4"),
        (lambda t: t.__setitem__(2, torch.randn(C_MID, 4, 3, 3)), "weight takes 4 input channels but up has 5"),
        (lambda t: t.__setitem__(1, torch.randn(2, 2, 7, 7)), r"skip's spatial size \(7, 7\) must be at least"),
    ],
)
def test_bad_inputs_raise_clear_errors(change, match):
    tensors = make(dtype=torch.float32)
    change(tensors)
    with pytest.raises(ValueError, match=match):
        crop_concat_conv3x3_block(*tensors)
