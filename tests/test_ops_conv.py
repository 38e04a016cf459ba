"""conv3x3_bias_relu on every backend against F.conv2d (+ F.relu): values in float32/bf16,
gradients (float64 gradcheck), which gradients are computed, layouts, opcheck, torch.compile,
autocast and bad inputs."""

import pytest
import torch
import torch.nn.functional as F

from unet_fast import tuning
from unet_fast.ops import conv3x3_bias_relu

from conftest import backends_for, dtypes_passed_to, onednn_emulates

BACKENDS = backends_for("conv3x3_bias_relu")
CUSTOM_OPS = {
    "cpu": torch.ops.unet_fast.conv3x3_bias_relu,
    "cuda": torch.ops.unet_fast.conv3x3_bias_relu,
    "triton": torch.ops.unet_fast.conv3x3_bias_relu_triton,
}
# Against the float64 composite: float32 is oneDNN's accumulation order, bf16 its rounding of
# inputs and output (8 bits of mantissa) over up to 9 * C_in products.
TOL = {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.bfloat16: dict(rtol=3e-2, atol=3e-2)}
SHAPES = [(2, 3, 9, 8, 4), (1, 1, 3, 3, 2), (1, 16, 13, 7, 8), (3, 5, 6, 11, 1)]  # N, C_in, H, W, C_out


def make(n, c_in, h, w, c_out, dtype=torch.float64, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c_in, h, w, generator=g, dtype=torch.float64)
    weight = torch.randn(c_out, c_in, 3, 3, generator=g, dtype=torch.float64) / (3 * c_in**0.5)
    bias = torch.randn(c_out, generator=g, dtype=torch.float64) * 0.1
    return [t.to(dtype=dtype, device=device) for t in (x, weight, bias)]


def expected(x, weight, bias, relu):
    out = F.conv2d(x.double(), weight.double(), None if bias is None else bias.double())
    return F.relu(out) if relu else out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_equals_conv2d_and_relu(backend, dtype, relu, shape, device):
    x, weight, bias = make(*shape, dtype=dtype, device=device)
    out = conv3x3_bias_relu(x, weight, bias, relu, backend=backend)
    assert out.dtype == dtype and out.shape == (shape[0], shape[4], shape[2] - 2, shape[3] - 2)
    torch.testing.assert_close(out.double(), expected(x, weight, bias, relu), **TOL[dtype])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("with_bias", [True, False])
def test_gradcheck_and_gradgradcheck_float64(backend, relu, with_bias, device):
    x, weight, bias = make(2, 3, 7, 6, 4, device=device)
    # Keep pre-activations away from 0, where the ReLU has no derivative.
    bias = bias + torch.where(bias >= 0, 0.05, -0.05)
    args = [t.requires_grad_() for t in (x, weight, bias if with_bias else None) if t is not None]

    def fn(x, weight, *rest):
        return conv3x3_bias_relu(x, weight, rest[0] if rest else None, relu, backend=backend)

    # The interpreter takes ~0.1 s a call: the Triton kernels get gradcheck's fast mode (random
    # projections of the Jacobian rather than every column of it).
    assert torch.autograd.gradcheck(fn, args, fast_mode=backend == "triton")
    assert torch.autograd.gradgradcheck(fn, args, fast_mode=backend == "triton")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gradients_equal_the_composite(backend, dtype, device):
    x, weight, bias = make(2, 8, 12, 10, 6, dtype=dtype, device=device)
    grad_out = torch.randn(2, 6, 10, 8, dtype=dtype, device=device)
    grads = []
    for chosen in (backend, "torch"):
        leaves = [t.detach().clone().requires_grad_() for t in (x, weight, bias)]
        conv3x3_bias_relu(*leaves, True, backend=chosen).backward(grad_out)
        grads.append([t.grad for t in leaves])
    for got, want in zip(*grads):
        assert got.dtype == want.dtype
        torch.testing.assert_close(got.double(), want.double(), **TOL[dtype])


@pytest.mark.parametrize("backend", BACKENDS)
def test_only_the_needed_gradients_are_computed(backend, device):
    x, weight, bias = make(1, 2, 5, 5, 3, dtype=torch.float32, device=device)
    weight.requires_grad_()
    out = conv3x3_bias_relu(x, weight, bias, backend=backend)
    out.sum().backward()
    assert weight.grad is not None and x.grad is None and bias.grad is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_and_channels_last_inputs(backend, device):
    x, weight, bias = make(2, 4, 10, 9, 3, dtype=torch.float32, device=device)
    want = expected(x, weight, bias, True)
    strided = torch.randn(2, 8, 10, 9, device=device)[:, ::2].copy_(x)
    for variant in (strided, x.contiguous(memory_format=torch.channels_last)):
        got = conv3x3_bias_relu(variant, weight, bias, backend=backend)
        torch.testing.assert_close(got.double(), want, **TOL[torch.float32])


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b in CUSTOM_OPS])
def test_opcheck(backend, device):
    x, weight, bias = make(2, 3, 6, 5, 4, device=device)
    op = CUSTOM_OPS[backend]
    torch.library.opcheck(op, (x, weight.requires_grad_(), bias.requires_grad_(), True))
    torch.library.opcheck(op, (x.requires_grad_(), weight.detach(), None, False))


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_fullgraph(backend, device):
    x, weight, bias = make(1, 3, 8, 8, 4, dtype=torch.float32, device=device)
    _, second, _ = make(1, 4, 6, 6, 4, dtype=torch.float32, device=device, seed=1)

    def block(x, weight, bias):
        hidden = conv3x3_bias_relu(x, weight, bias, backend=backend)
        return conv3x3_bias_relu(hidden, second, bias, False, backend=backend)

    weight = weight.requires_grad_()
    compiled = torch.compile(block, fullgraph=True)
    got = compiled(x, weight, bias)
    (grad_compiled,) = torch.autograd.grad(got.sum(), weight)
    want = block(x, weight, bias)
    (grad_eager,) = torch.autograd.grad(want.sum(), weight)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(grad_compiled, grad_eager)


@pytest.mark.parametrize("backend", BACKENDS)
def test_autocast_runs_in_bfloat16(backend, device):
    x, weight, bias = make(1, 4, 8, 8, 4, dtype=torch.float32, device=device)
    weight.requires_grad_()
    with torch.autocast(device.type, dtype=torch.bfloat16):
        out = conv3x3_bias_relu(x, weight, bias, backend=backend)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert weight.grad.dtype == torch.float32
    torch.testing.assert_close(out.double(), expected(x, weight, bias, True), **TOL[torch.bfloat16])


@pytest.mark.parametrize("backend", BACKENDS)
def test_autocast_hands_the_cpu_kernels_float32_parameters(backend, device):
    """The C++ CPU kernels take autocast's float32 weight and bias as they are (no bf16 copy each
    call; their gradients summed in float32); other backends get them cast, as F.conv2d does."""
    x, weight, bias = make(1, 4, 8, 8, 4, dtype=torch.float32, device=device)
    weight.requires_grad_()

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out = conv3x3_bias_relu(x, weight, bias, backend=backend)
        out.float().sum().backward()

    seen = dtypes_passed_to("unet_fast", step)
    parameters = torch.float32 if backend == "cpu" else torch.bfloat16
    if backend != "torch":
        forward = next(dtypes for name, dtypes in seen.items() if not name.endswith("backward"))
        assert forward == [torch.bfloat16, parameters, parameters]
    assert weight.grad.dtype == torch.float32


def test_mixed_dtypes_outside_autocast_are_refused():
    x, weight, bias = make(1, 4, 8, 8, 4, dtype=torch.float32)
    with pytest.raises(TypeError, match="weight has dtype torch.float32 but x has torch.bfloat16"):
        conv3x3_bias_relu(x.bfloat16(), weight, bias, backend="cpu")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_direct_cpu_forward_is_onednns_convolution_then_relu(dtype, environment):
    # The CPU backend's direct forward is oneDNN's convolution followed by relu_, bit for bit
    # (not oneDNN's ReLU post-op, which turns NaN into 0).
    if dtype == torch.bfloat16 and onednn_emulates(dtype):
        pytest.skip("oneDNN emulates bf16 on this CPU: the backend computes it in fp32 (tested above)")
    environment.setenv("UNET_FAST_WINOGRAD", "0")
    x, weight, bias = (t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t
                       for t in make(2, 16, 20, 17, 24, dtype=dtype))
    ours = conv3x3_bias_relu(x, weight, bias, True, backend="cpu")
    assert torch.equal(ours, torch.relu(torch.convolution(x, weight, bias, [1, 1], [0, 0], [1, 1], False, [0, 0], 1)))
    assert ours.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("algorithm,shape", [
    ("few", (1, 1, 21, 23, 64)), ("few", (2, 3, 9, 6, 70)), ("few", (1, 2, 3, 3, 5)),
    ("unfold", (1, 40, 6, 6, 48)), ("unfold", (2, 7, 5, 4, 30)),
], ids=str)
def test_our_direct_forwards_equal_conv2d(algorithm, dtype, relu, shape):
    # The forwards the tuner offers beside oneDNN's and Winograd's: "few" for inputs of up to 4
    # channels (blocks of 4 pixels and the columns left over, 21 and 6 wide; output channels in
    # blocks of 64, or 32 doubles, and the rest), "unfold" where the output pixels are fewer
    # than the output channels (one GEMM of patches taken in the filters' order). NCHW and
    # channels_last inputs and filters, no bias, NaN kept through the ReLU; no data gradient.
    x, weight, bias = make(*shape, dtype=dtype)
    x[0, 0, 1, 1] = float("nan")
    want = expected(x, weight, bias, relu)
    for layout in (torch.contiguous_format, torch.channels_last):
        shaped = weight.contiguous(memory_format=layout)
        out = torch.ops.unet_fast.conv3x3_bias_relu(x.contiguous(memory_format=layout), shaped, bias, relu, algorithm)
        assert out.dtype == dtype and out.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(out.double(), want, rtol=1e-6, atol=1e-6, equal_nan=True)
    no_bias = torch.ops.unet_fast.conv3x3_bias_relu(x, weight, None, relu, algorithm)
    torch.testing.assert_close(no_bias.double(), expected(x, weight, None, relu), rtol=1e-6, atol=1e-6, equal_nan=True)
    refusal = f"'{algorithm}' computes fp32/fp64 forwards and weight gradients only, not the data"
    with pytest.raises(RuntimeError, match=refusal):
        torch.ops.unet_fast.conv3x3_bias_relu_backward(out, x, weight, None, [True, False, False], algorithm, "direct")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(1, 1, 21, 23, 64), (2, 3, 9, 6, 70), (1, 2, 3, 3, 5), (2, 4, 12, 7, 33)], ids=str)
def test_few_channels_weight_gradient_equals_conv2d_weight(dtype, shape):
    # "few"'s weight gradient: whole vectors of channels and the rest (70 = 64 + 6, 33, 5),
    # NCHW and channels_last inputs, the weight's layout kept, and sums added in an order that
    # does not depend on the thread count.
    x, weight, _ = make(*shape, dtype=dtype)
    grad = torch.randn(shape[0], shape[4], shape[2] - 2, shape[3] - 2, dtype=dtype)
    want = torch.nn.grad.conv2d_weight(x.double(), weight.shape, grad.double())
    mask = [False, True, False]
    for layout in (torch.contiguous_format, torch.channels_last):
        shaped = weight.contiguous(memory_format=layout)
        got = torch.ops.unet_fast.conv3x3_bias_relu_backward(grad, x.contiguous(memory_format=layout), shaped, None,
                                                             mask, "direct", "few")[1]
        assert got.dtype == dtype and got.stride() == shaped.stride()
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        alone = torch.ops.unet_fast.conv3x3_bias_relu_backward(grad, x, weight, None, mask, "direct", "few")[1]
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(alone, torch.ops.unet_fast.conv3x3_bias_relu_backward(grad, x, weight, None, mask, "direct",
                                                                             "few")[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind", ["one", "all"])
def test_nan_input_gives_nan_where_torch_does_by_every_cpu_algorithm(dtype, kind):
    # Winograd may widen a NaN to the rest of its output block (test_ops_conv_winograd.py);
    # no algorithm may drop one.
    x, weight, bias = (t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t
                       for t in make(1, 8, 20, 19, 8, dtype=dtype))
    if kind == "one":
        x[0, 3, 7, 5] = float("nan")
    else:
        x.fill_(float("nan"))
    want = torch.relu(F.conv2d(x.double(), weight.double(), bias.double())).isnan()
    shape = tuning.ConvShape.of("forward", x, weight)
    for algorithm in tuning.candidates(shape):
        out = torch.ops.unet_fast.conv3x3_bias_relu(x, weight, bias, True, algorithm)
        assert out.isnan()[want].all(), algorithm


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_nan_output_passes_its_gradient_as_torchs_relu(backend, device):
    x, weight, bias = make(1, 3, 8, 8, 2, device=device)
    x[0, 1, 3, 3] = float("nan")
    got = [t.detach().clone().requires_grad_() for t in (x, weight, bias)]
    want = [t.detach().clone().requires_grad_() for t in (x, weight, bias)]
    grad = torch.randn(1, 2, 6, 6, dtype=x.dtype, device=device)
    conv3x3_bias_relu(*got, backend=backend).backward(grad)
    torch.relu(F.conv2d(*want)).backward(grad)
    for ours, torchs in zip(got, want):
        torch.testing.assert_close(ours.grad, torchs.grad, equal_nan=True)


def test_output_is_channels_last():
    x, weight, bias = make(1, 4, 8, 8, 4, dtype=torch.float32)
    assert conv3x3_bias_relu(x, weight, bias, backend="cpu").is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize(
    "change,error,match",
    [
        (lambda a: a.update(x=a["x"][0]), ValueError, r"x must be 4-D"),
        (lambda a: a.update(weight=torch.randn(4, 3, 5, 5)), ValueError, r"weight must be \(C_out, C_in, 3, 3\), got kernel size \(5, 5\)"),
        (lambda a: a.update(weight=torch.randn(4, 2, 3, 3)), ValueError, "weight takes 2 input channels but x has 3"),
        (lambda a: a.update(x=torch.randn(1, 3, 2, 9)), ValueError, r"x must be at least 3x3"),
        (lambda a: a.update(bias=torch.randn(5)), ValueError, "bias must have C_out = 4 entries"),
        (lambda a: a.update(x=a["x"].double()), TypeError, "weight has dtype torch.float32 but x has torch.float64"),
        (lambda a: a.update(x=a["x"].long()), TypeError, "x must have dtype"),
        (lambda a: a.update(relu=1), TypeError, "relu must be a bool"),
        (lambda a: a.update(x=torch.randn(1, 0, 8, 8), weight=torch.randn(4, 0, 3, 3)), ValueError,
         r"weight must have at least one output and one input channel, got shape \(4, 0, 3, 3\)"),
        (lambda a: a.update(weight=torch.randn(0, 3, 3, 3), bias=None), ValueError, "at least one output"),
    ],
)
def test_bad_inputs_raise_clear_errors(change, error, match):
    x, weight, bias = make(1, 3, 6, 6, 4, dtype=torch.float32)
    args = dict(x=x, weight=weight, bias=bias, relu=True)
    change(args)
    with pytest.raises(error, match=match):
        conv3x3_bias_relu(**args)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_weight_gradient_keeps_the_weights_layout(backend, layout, device):
    x, weight, bias = make(1, 4, 8, 8, 4, dtype=torch.float32, device=device)
    weight = weight.contiguous(memory_format=layout).requires_grad_()
    conv3x3_bias_relu(x, weight, bias, backend=backend).sum().backward()
    assert weight.grad.stride() == weight.stride()


@pytest.mark.parametrize("allow_tf32", [True, False])
def test_triton_dots_use_tf32_only_where_cudnn_may(allow_tf32, monkeypatch):
    from unet_fast.kernels import conv3x3

    monkeypatch.setattr(conv3x3, "INTERPRETED", False)  # the choice a GPU launch makes
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", allow_tf32)
    assert conv3x3._dot_precision(torch.float32) == ("tf32" if allow_tf32 else "ieee")
    assert conv3x3._dot_precision(torch.bfloat16) == "ieee"  # tensor cores regardless
    assert conv3x3._dot_precision(torch.float64) == "ieee"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cpu_computes_in_fp32_where_onednn_emulates_the_dtype(dtype):
    # Without AVX-512 oneDNN emulates bf16/fp16 several times slower than fp32, so the CPU
    # backend computes in fp32 and rounds once; elsewhere it runs oneDNN in the dtype.
    emulated = onednn_emulates(dtype)
    g = torch.Generator().manual_seed(0)
    x, weight, bias = (torch.randn(shape, generator=g) for shape in [(2, 16, 12, 12), (24, 16, 3, 3), (24,)])
    grad = torch.randn(2, 24, 10, 10, generator=g)
    results = {}
    for compute in (dtype, torch.float32):
        args = [t.to(dtype).to(compute).requires_grad_() for t in (x, weight, bias)]
        out = conv3x3_bias_relu(*args, True, backend="cpu")
        out.backward(grad.to(dtype).to(compute))
        results[compute] = [t.to(dtype) for t in [out] + [a.grad for a in args]]
        assert out.dtype == compute
    for reduced, rounded in zip(results[dtype], results[torch.float32]):
        if emulated:
            assert torch.equal(reduced, rounded)
        torch.testing.assert_close(reduced.float(), rounded.float(), rtol=3e-2, atol=3e-2)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "torch"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_backward_can_apply_the_relu_its_input_came_out_of(backend, dtype, device):
    # relu_input: x is a ReLU's output (zeros included, one NaN), and x's gradient comes back
    # through that ReLU's backward too, as torch's (threshold_backward: zero where x <= 0, so
    # the NaN passes its gradient on); the weight's and the bias's gradients are untouched.
    from unet_fast.ops.conv import backward_on

    x, weight, _ = make(2, 4, 9, 8, 3, dtype=dtype, device=device)
    x = torch.relu(x)
    x[0, 1, 2, 3] = float("nan")
    grad = torch.randn(2, 3, 7, 6, dtype=dtype, device=device)
    mask = [True, True, True]
    plain = backward_on(backend, grad, x, weight, None, mask)
    through = backward_on(backend, grad, x, weight, None, mask, relu_input=True)
    exactly = dict(rtol=0, atol=0, equal_nan=True)  # the NaN reaches the weight's gradient
    torch.testing.assert_close(through[0], torch.ops.aten.threshold_backward(plain[0], x, 0), **exactly)
    assert through[0][0, 1, 2, 3] == plain[0][0, 1, 2, 3] != 0
    torch.testing.assert_close(through[1], plain[1], **exactly)
    torch.testing.assert_close(through[2], plain[2], **exactly)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b == "triton"])
def test_the_triton_weight_gradient_honours_deterministic_algorithms(backend, device):
    x, weight, bias = make(1, 3, 6, 6, 2, dtype=torch.float32, device=device)
    weight.requires_grad_()
    try:
        torch.use_deterministic_algorithms(True)
        with pytest.raises(RuntimeError, match="sums with atomics.*backend='cuda'"):
            conv3x3_bias_relu(x, weight, bias, backend=backend).sum().backward()
        torch.use_deterministic_algorithms(True, warn_only=True)
        with pytest.warns(UserWarning, match="not deterministic"):
            conv3x3_bias_relu(x, weight, bias, backend=backend).sum().backward()
    finally:
        torch.use_deterministic_algorithms(False)
    x.requires_grad_()
    weight.grad = None
    torch.use_deterministic_algorithms(True)
    try:  # the input's gradient alone sums in a fixed order
        conv3x3_bias_relu(x, weight.detach(), bias, backend=backend).sum().backward()
    finally:
        torch.use_deterministic_algorithms(False)
