"""up_conv2x2 on every backend against F.conv_transpose2d in float64: values and all three
gradients (odd sizes, batches, with and without bias, NCHW and channels_last, non-contiguous),
float64 gradcheck, only the asked-for gradients, the weight gradient's layout, autocast,
fp32 compute where oneDNN emulates the dtype, opcheck, torch.compile and bad inputs."""

import pytest
import torch
import torch.nn.functional as F

from unet_fast.ops import up_conv2x2

from conftest import backends_for, dtypes_passed_to, onednn_emulates

BACKENDS = backends_for("up_conv2x2")
# (N, C_in, H, W, C_out)
SHAPES = [(1, 8, 5, 7, 4), (2, 3, 1, 1, 5), (3, 16, 6, 3, 8), (1, 64, 9, 9, 32)]
TOL = {torch.float64: dict(rtol=1e-12, atol=1e-12), torch.float32: dict(rtol=1e-5, atol=1e-5),
       torch.bfloat16: dict(rtol=2e-2, atol=5e-2)}


def make(n, c_in, h, w, c_out, dtype=torch.float32, device="cpu"):
    x = torch.randn(n, c_in, h, w, device=device, dtype=dtype)
    weight = torch.randn(c_out, c_in, 2, 2, device=device, dtype=dtype).transpose(0, 1).contiguous() / c_in**0.5
    bias = torch.randn(c_out, device=device, dtype=dtype)
    return x, weight, bias


def output_and_grads(fn, x, weight, bias, grad):
    args = [t.detach().clone().requires_grad_() if t is not None else None for t in (x, weight, bias)]
    out = fn(*args)
    out.backward(grad)
    return [out.detach()] + [a.grad for a in args if a is not None]


def expected(x, weight, bias, grad):
    """Reference values and gradients in float64."""
    as64 = [t.double() if t is not None else None for t in (x, weight, bias)]
    return output_and_grads(lambda *a: F.conv_transpose2d(*a, stride=2), *as64, grad.double())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_values_and_gradients_equal_conv_transpose2d(backend, dtype, with_bias, shape, device):
    x, weight, bias = make(*shape, dtype=dtype, device=device)
    bias = bias if with_bias else None
    grad = torch.randn(shape[0], shape[4], 2 * shape[2], 2 * shape[3], device=device, dtype=dtype)
    got = output_and_grads(lambda *a: up_conv2x2(*a, backend=backend), x, weight, bias, grad)
    for value, want in zip(got, expected(x, weight, bias, grad)):
        assert value.dtype == dtype
        torch.testing.assert_close(value.double(), want, **TOL[dtype])


@pytest.mark.parametrize("grad_mode", [True, False])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_the_cpu_forward_by_pieces_of_rows_equals_conv_transpose2d(dtype, grad_mode):
    """Large enough that the forward goes by pieces of rows, a GEMM each on one core
    (csrc/cpu/up_conv.cpp; pieces of 4 or 8 rows, one of them across the two images): in
    training and in inference, with a channels_last weight that requires grad, as the UNet's
    are (its taps then a view of it)."""
    x, weight, bias = make(2, 16, 42, 64, 64, dtype=dtype)
    weight = weight.contiguous(memory_format=torch.channels_last).requires_grad_()
    with torch.set_grad_enabled(grad_mode):
        out = up_conv2x2(x, weight, bias, backend="cpu")
    want = F.conv_transpose2d(x.double(), weight.double(), bias.double(), stride=2)
    torch.testing.assert_close(out.detach().double(), want, **TOL[dtype])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["channels_last", "sliced", "nchw"])
def test_any_input_layout(backend, layout, device):
    x, weight, bias = make(2, 6, 8, 10, 4, device=device)
    x = {"channels_last": x.contiguous(memory_format=torch.channels_last), "sliced": x[:, :, 1:7, ::2],
         "nchw": x}[layout]
    grad = torch.randn(2, 4, 2 * x.shape[2], 2 * x.shape[3], device=device)
    got = output_and_grads(lambda *a: up_conv2x2(*a, backend=backend), x, weight, bias, grad)
    for value, want in zip(got, expected(x, weight, bias, grad)):
        torch.testing.assert_close(value.double(), want, **TOL[torch.float32])


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_and_gradgradcheck_float64(backend, device):
    x, weight, bias = (t.requires_grad_() for t in make(2, 3, 3, 4, 2, dtype=torch.float64, device=device))
    assert torch.autograd.gradcheck(lambda *a: up_conv2x2(*a, backend=backend), (x, weight, bias))
    assert torch.autograd.gradgradcheck(lambda *a: up_conv2x2(*a, backend=backend), (x, weight, bias))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("wanted", ["x", "weight", "bias"])
def test_only_the_needed_gradients_are_computed(backend, wanted, device):
    tensors = dict(zip(("x", "weight", "bias"), make(1, 4, 3, 3, 2, device=device)))
    tensors[wanted].requires_grad_()
    up_conv2x2(**tensors, backend=backend).sum().backward()
    assert [name for name, t in tensors.items() if t.grad is not None] == [wanted]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_weight_gradient_keeps_the_weights_layout(backend, layout, device):
    x, weight, bias = make(1, 4, 5, 5, 3, device=device)
    weight = weight.contiguous(memory_format=layout).requires_grad_()
    up_conv2x2(x, weight, bias, backend=backend).sum().backward()
    assert weight.grad.stride() == weight.stride()


@pytest.mark.parametrize("backend", BACKENDS)
def test_autocast_runs_in_bfloat16(backend, device):
    x, weight, bias = make(1, 8, 6, 6, 4, device=device)
    weight.requires_grad_()
    with torch.autocast(device.type, dtype=torch.bfloat16):
        out = up_conv2x2(x, weight, bias, backend=backend)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert weight.grad.dtype == torch.float32
    want = F.conv_transpose2d(x.double(), weight.double(), bias.double(), stride=2)
    torch.testing.assert_close(out.double(), want, **TOL[torch.bfloat16])


@pytest.mark.parametrize("backend", BACKENDS)
def test_autocast_hands_the_cpu_kernel_float32_parameters(backend, device):
    """The C++ kernel takes autocast's float32 weight and bias as they are and returns their
    gradients in float32; other backends get them cast, as F.conv_transpose2d does."""
    x, weight, bias = make(2, 8, 5, 6, 4, device=device)
    weight.requires_grad_()
    bias.requires_grad_()
    grad = torch.randn(2, 4, 10, 12, device=device)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out = up_conv2x2(x, weight, bias, backend=backend)
        out.float().backward(grad)

    seen = dtypes_passed_to("unet_fast", step)
    if backend == "cpu":
        assert seen["up_conv2x2"] == [torch.bfloat16, torch.float32, torch.float32]
    weight64, bias64 = (t.detach().double().requires_grad_() for t in (weight, bias))
    F.conv_transpose2d(x.bfloat16().double(), weight64, bias64, stride=2).backward(grad.bfloat16().double())
    assert weight.grad.dtype == bias.grad.dtype == torch.float32
    torch.testing.assert_close(weight.grad.double(), weight64.grad, **TOL[torch.bfloat16])
    torch.testing.assert_close(bias.grad.double(), bias64.grad, **TOL[torch.bfloat16])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cpu_computes_in_fp32_where_onednn_emulates_the_dtype(dtype):
    emulated = onednn_emulates(dtype)
    x, weight, bias = make(2, 16, 6, 5, 8)
    grad = torch.randn(2, 8, 12, 10)
    results = {}
    for compute in (dtype, torch.float32):
        rounded = [t.to(dtype).to(compute) for t in (x, weight, bias, grad)]
        values = output_and_grads(lambda *a: up_conv2x2(*a, backend="cpu"), *rounded)
        assert values[0].dtype == compute
        results[compute] = [v.to(dtype) for v in values]
    for reduced, rounded in zip(results[dtype], results[torch.float32]):
        if emulated:
            assert torch.equal(reduced, rounded)
        torch.testing.assert_close(reduced.float(), rounded.float(), rtol=3e-2, atol=3e-2)


def test_output_is_channels_last():
    assert up_conv2x2(*make(1, 4, 3, 5, 2), backend="cpu").is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("with_bias", [True, False])
def test_opcheck(with_bias):
    x, weight, bias = (t.requires_grad_() for t in make(2, 4, 3, 5, 3))
    torch.library.opcheck(torch.ops.unet_fast.up_conv2x2, (x, weight, bias if with_bias else None))


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_fullgraph(backend, device):
    x, weight, bias = make(1, 4, 5, 5, 3, device=device)
    weight.requires_grad_()
    fn = lambda w: up_conv2x2(x, w, bias, backend=backend).sin().sum()  # noqa: E731
    (grad_compiled,) = torch.autograd.grad(torch.compile(fn, fullgraph=True)(weight), weight)
    (grad_eager,) = torch.autograd.grad(fn(weight), weight)
    torch.testing.assert_close(grad_compiled, grad_eager)


@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_gpu_backends_run_the_composite(backend, device):
    x, weight, bias = make(1, 4, 3, 3, 2, device=device)
    torch.testing.assert_close(up_conv2x2(x, weight, bias, backend=backend),
                               F.conv_transpose2d(x, weight, bias, stride=2), rtol=0, atol=0)


@pytest.mark.parametrize(
    "change,error,match",
    [
        (lambda a: a.update(x=a["x"][0]), ValueError, r"x must be 4-D"),
        (lambda a: a.update(weight=torch.randn(3, 4, 3, 3)), ValueError,
         r"weight must be \(C_in, C_out, 2, 2\), got kernel size \(3, 3\)"),
        (lambda a: a.update(weight=torch.randn(5, 4, 2, 2)), ValueError, "weight takes 5 input channels but x has 3"),
        (lambda a: a.update(bias=torch.randn(5)), ValueError, r"bias must have 4 entries \(C_out\), got 5"),
        (lambda a: a.update(bias=torch.randn(4, 1)), ValueError, "bias must be 1-D"),
        (lambda a: a.update(x=a["x"].double()), TypeError, "weight has dtype torch.float32 but x has torch.float64"),
        (lambda a: a.update(x=a["x"].long()), TypeError, "x must have dtype"),
    ],
)
def test_bad_inputs_raise_clear_errors(change, error, match):
    x, weight, bias = make(1, 3, 4, 4, 4)
    args = dict(x=x, weight=weight, bias=bias)
    change(args)
    with pytest.raises(error, match=match):
        up_conv2x2(**args)
