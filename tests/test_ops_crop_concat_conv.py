"""crop_concat_conv3x3 (the decoder's join and first convolution) on every backend against
crop-and-cat followed by F.conv2d: values, every gradient (float64 gradcheck), opcheck,
torch.compile, autocast and bad inputs."""

import pytest
import torch
import torch.nn.functional as F

from unet_fast import reference
from unet_fast.ops import crop_concat_conv3x3

from conftest import backends_for

BACKENDS = backends_for("crop_concat_conv3x3")
CUSTOM_OPS = {
    "cpu": torch.ops.unet_fast.crop_concat_conv3x3,
    "cuda": torch.ops.unet_fast.crop_concat_conv3x3,
    "triton": torch.ops.unet_fast.crop_concat_conv3x3_triton,
}
TOL = {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.bfloat16: dict(rtol=3e-2, atol=3e-2)}
# (up shape, skip shape): even and odd crops, and no crop.
SHAPES = [((2, 3, 8, 8), (2, 2, 13, 12)), ((1, 2, 5, 6), (1, 3, 8, 11)), ((1, 4, 6, 6), (1, 4, 6, 6))]


def make(up_shape, skip_shape, c_out=4, dtype=torch.float64, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    up = torch.randn(up_shape, generator=g, dtype=torch.float64)
    skip = torch.randn(skip_shape, generator=g, dtype=torch.float64)
    c_in = up_shape[1] + skip_shape[1]
    weight = torch.randn(c_out, c_in, 3, 3, generator=g, dtype=torch.float64) / (3 * c_in**0.5)
    bias = torch.randn(c_out, generator=g, dtype=torch.float64) * 0.1
    bias = bias + torch.where(bias >= 0, 0.05, -0.05)  # pre-activations away from the ReLU's kink
    return [t.to(dtype=dtype, device=device) for t in (up, skip, weight, bias)]


def expected(up, skip, weight, bias, relu=True):
    joined = torch.cat([up, reference.center_crop(skip, up.shape[-2:])], 1)
    out = F.conv2d(joined.double(), weight.double(), bias.double())
    return F.relu(out) if relu else out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("up_shape,skip_shape", SHAPES)
def test_forward_equals_crop_cat_and_conv(backend, dtype, relu, up_shape, skip_shape, device):
    up, skip, weight, bias = make(up_shape, skip_shape, dtype=dtype, device=device)
    out = crop_concat_conv3x3(up, skip, weight, bias, relu, backend=backend)
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), expected(up, skip, weight, bias, relu), **TOL[dtype])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("relu", [True, False])
def test_gradcheck_and_gradgradcheck_float64(backend, relu, device):
    up, skip, weight, bias = make((1, 2, 5, 5), (1, 2, 8, 7), c_out=3, device=device)
    args = [t.requires_grad_() for t in (up, skip, weight, bias)]

    def fn(up, skip, weight, bias):
        return crop_concat_conv3x3(up, skip, weight, bias, relu, backend=backend)

    assert torch.autograd.gradcheck(fn, args, fast_mode=backend == "triton")
    assert torch.autograd.gradgradcheck(fn, args, fast_mode=backend == "triton")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("needed", [(True, True, True, True), (False, True, True, False), (True, False, False, False)])
def test_gradients_equal_the_composite(backend, needed, device):
    tensors = make(*SHAPES[0], dtype=torch.float32, device=device)
    grad_out = torch.randn(2, 4, 6, 6, device=device)
    grads = []
    for chosen in (backend, "torch"):
        leaves = [t.detach().clone().requires_grad_(wanted) for t, wanted in zip(tensors, needed)]
        crop_concat_conv3x3(*leaves, backend=chosen).backward(grad_out)
        grads.append([t.grad for t in leaves])
    for got, want in zip(*grads):
        assert (got is None) == (want is None)
        if want is not None:
            torch.testing.assert_close(got, want, **TOL[torch.float32])


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b in CUSTOM_OPS])
def test_opcheck(backend, device):
    up, skip, weight, bias = make(*SHAPES[1], device=device)
    op = CUSTOM_OPS[backend]
    torch.library.opcheck(op, (up.requires_grad_(), skip.requires_grad_(), weight.requires_grad_(), bias, True))
    torch.library.opcheck(op, (up.detach(), skip.detach(), weight, None, False))


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_fullgraph(backend, device):
    up, skip, weight, bias = make(*SHAPES[0], dtype=torch.float32, device=device)
    weight.requires_grad_()
    fn = lambda up, skip, weight: crop_concat_conv3x3(up, skip, weight, bias, backend=backend)  # noqa: E731
    got = torch.compile(fn, fullgraph=True)(up, skip, weight)
    (grad_compiled,) = torch.autograd.grad(got.sum(), weight)
    want = fn(up, skip, weight)
    (grad_eager,) = torch.autograd.grad(want.sum(), weight)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(grad_compiled, grad_eager)


@pytest.mark.parametrize("backend", BACKENDS)
def test_autocast_runs_in_bfloat16(backend, device):
    up, skip, weight, bias = make(*SHAPES[0], dtype=torch.float32, device=device)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        out = crop_concat_conv3x3(up, skip, weight, bias, backend=backend)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.double(), expected(up, skip, weight, bias), **TOL[torch.bfloat16])


@pytest.mark.parametrize("backend", BACKENDS)
def test_autocast_backward_matches_float64(backend, device):
    """Under bf16 autocast every gradient (the bias's summed once over the ReLU-masked gradient of
    both sources) is the float64 composite's within 1% norm-wise (sums of 72 bf16 products, not
    each element within bf16's tolerance), the parameters' in float32."""
    tensors = make(*SHAPES[0], dtype=torch.float32, device=device)
    grad_out = torch.randn(2, 4, 6, 6, device=device)
    leaves = [t.detach().clone().requires_grad_() for t in tensors]
    with torch.autocast(device.type, dtype=torch.bfloat16):
        out = crop_concat_conv3x3(*leaves, backend=backend)
    out.float().backward(grad_out)
    exact = [t.detach().double().requires_grad_() for t in tensors]
    expected(*exact).backward(grad_out.double())
    for got, want in zip(leaves, exact):
        assert got.grad.dtype == torch.float32
        assert (got.grad.double() - want.grad).norm() <= 1e-2 * want.grad.norm()


@pytest.mark.parametrize(
    "change,error,match",
    [
        (lambda a: a.update(weight=torch.randn(4, 4, 3, 3)), ValueError, "weight takes 4 input channels but up has 5"),
        (lambda a: a.update(skip=torch.randn(2, 2, 6, 12)), ValueError, "skip's spatial size"),
        (lambda a: a.update(up=torch.randn(2, 3, 2, 2), skip=torch.randn(2, 2, 4, 4)), ValueError, "up must be at least 3x3"),
        (lambda a: a.update(bias=torch.randn(3)), ValueError, "bias must have C_out = 4 entries"),
        (lambda a: a.update(skip=a["skip"].double()), TypeError, "skip has dtype torch.float64"),
    ],
)
def test_bad_inputs_raise_clear_errors(change, error, match):
    up, skip, weight, bias = make(*SHAPES[0], dtype=torch.float32)
    args = dict(up=up, skip=skip, weight=weight, bias=bias)
    change(args)
    with pytest.raises(error, match=match):
        crop_concat_conv3x3(**args)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "torch"])
def test_the_joined_tensor_is_not_kept_for_backward(backend, device):
    up, skip, weight, bias = make(*SHAPES[0], dtype=torch.float32, device=device)
    joined_channels = up.shape[1] + skip.shape[1]
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(tuple(t.shape)) or t, lambda t: t):
        crop_concat_conv3x3(up, skip, weight.requires_grad_(), bias, backend=backend)
    assert saved and all(len(shape) != 4 or shape[1] != joined_channels or shape[0] != up.shape[0] for shape in saved)


@pytest.mark.parametrize("algorithm", ["winograd2", "winograd4", "winograd6", "winograd4-aten"])
@pytest.mark.parametrize("dtype,tolerance", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("up_shape,skip_shape", SHAPES + [((2, 40, 17, 19), (2, 24, 30, 24))])
def test_winograd_reads_up_and_the_skip_window_where_they_lie(algorithm, dtype, tolerance, up_shape, skip_shape):
    # the CPU forward by Winograd joins the channels in its input transform, never building the join
    up, skip, weight, bias = make(up_shape, skip_shape, c_out=5, dtype=dtype)
    out = torch.ops.unet_fast.crop_concat_conv3x3(up, skip, weight, bias, True, algorithm)
    want = expected(up, skip, weight, bias)
    assert out.dtype == dtype and out.is_contiguous(memory_format=torch.channels_last)
    assert (out.double() - want).norm() <= tolerance * want.norm()


def test_winograd_join_keeps_nan_and_falls_back_where_it_does_not_apply():
    up, skip, weight, bias = make((1, 3, 8, 8), (1, 2, 13, 12), dtype=torch.float32)
    poisoned = skip.clone()
    poisoned[0, 1, 6, 6] = float("nan")  # inside the window: every output that reads it is NaN
    out = torch.ops.unet_fast.crop_concat_conv3x3(up, poisoned, weight, bias, False, "winograd4")
    assert out[expected(up, poisoned, weight, bias, relu=False).isnan()].isnan().all()
    bf16 = [t.bfloat16() for t in (up, skip, weight, bias)]  # bf16 takes the composite
    torch.testing.assert_close(torch.ops.unet_fast.crop_concat_conv3x3(*bf16, True, "winograd2").double(),
                               expected(*bf16), **TOL[torch.bfloat16])
    with pytest.raises(RuntimeError, match="crop_concat: batch sizes differ"):
        torch.ops.unet_fast.crop_concat_conv3x3(up, skip.expand(2, -1, -1, -1), weight, bias, True, "winograd4")
    with pytest.raises(RuntimeError, match="weight takes 5 input channels, x has 6"):
        torch.ops.unet_fast.crop_concat_conv3x3(up, torch.cat([skip, skip[:, :1]], 1), weight, bias, True, "winograd4")


def test_the_winograd_join_under_gradcheck_opcheck_and_compile(environment):
    # UNET_FAST_WINOGRAD forces F(4x4) for every fp32/fp64 pass, so the CPU forward takes the
    # join in its input transform even at these small sizes
    environment.setenv("UNET_FAST_WINOGRAD", "4")
    up, skip, weight, bias = make((1, 2, 7, 6), (1, 3, 10, 9), c_out=3)
    args = [t.requires_grad_() for t in (up, skip, weight, bias)]
    fn = lambda up, skip, weight, bias: crop_concat_conv3x3(up, skip, weight, bias, backend="cpu")  # noqa: E731
    assert torch.autograd.gradcheck(fn, args)
    assert torch.autograd.gradgradcheck(fn, args)
    torch.library.opcheck(torch.ops.unet_fast.crop_concat_conv3x3, (up, skip, weight, bias, True, "winograd4"))
    single = [t.detach().float() for t in args]
    torch.testing.assert_close(torch.compile(fn, fullgraph=True)(*single), fn(*single))
