"""crop_concat on every backend against the composite: values, layouts, gradients (float64
gradcheck and gradgradcheck), opcheck, torch.compile and bad inputs."""

import subprocess
import sys

import pytest
import torch

import unet_fast
from unet_fast import reference
from unet_fast.ops import backends
from unet_fast.ops.crop_concat import center_crop_offset

from conftest import backends_for

BACKENDS = backends_for("crop_concat")
CUSTOM_OPS = {
    "cpu": (torch.ops.unet_fast.crop_concat, torch.ops.unet_fast.crop_concat_backward),
    "cuda": (torch.ops.unet_fast.crop_concat, torch.ops.unet_fast.crop_concat_backward),
    "triton": (torch.ops.unet_fast.crop_concat_triton, torch.ops.unet_fast.crop_concat_triton_backward),
}
# (up shape, skip shape): even and odd size differences; 3 and 5 are where half-to-even
# rounding differs from rounding half up.
SHAPES = [
    ((2, 3, 8, 8), (2, 5, 16, 16)),
    ((1, 4, 5, 6), (1, 2, 8, 11)),
    ((2, 1, 7, 4), (2, 3, 10, 9)),
    ((1, 2, 1, 1), (1, 1, 1, 2)),
    ((3, 2, 4, 4), (3, 2, 4, 4)),
]


def expected(up, skip):
    return torch.cat([up, reference.center_crop(skip, up.shape[-2:])], 1)


def inputs(up_shape, skip_shape, dtype=torch.float32, device="cpu", requires_grad=False):
    up = torch.randn(up_shape, dtype=dtype, device=device, requires_grad=requires_grad)
    skip = torch.randn(skip_shape, dtype=dtype, device=device, requires_grad=requires_grad)
    return up, skip


@pytest.mark.parametrize("diff", range(0, 40))
def test_center_crop_offset_matches_python_round(diff):
    assert center_crop_offset(50 + diff, 50) == int(round(diff / 2.0))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("up_shape,skip_shape", SHAPES)
def test_forward_equals_reference_crop_and_cat(backend, dtype, up_shape, skip_shape, device):
    up, skip = inputs(up_shape, skip_shape, dtype, device)
    out = unet_fast.crop_concat(up, skip, backend=backend)
    assert out.dtype == dtype
    torch.testing.assert_close(out, expected(up, skip), rtol=0, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_backward_splits_the_gradient_and_zeroes_outside_the_window(backend, device):
    up, skip = inputs((2, 3, 5, 6), (2, 4, 10, 9), device=device, requires_grad=True)
    grad = torch.randn(2, 7, 5, 6, device=device)
    unet_fast.crop_concat(up, skip, backend=backend).backward(grad)
    torch.testing.assert_close(up.grad, grad[:, :3], rtol=0, atol=0)
    want = torch.zeros_like(skip)
    want[:, :, 2:7, 2:8] = grad[:, 3:]  # offsets round(2.5) = 2 and round(1.5) = 2
    torch.testing.assert_close(skip.grad, want, rtol=0, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("up_shape,skip_shape", [((1, 2, 3, 3), (1, 2, 6, 5)), ((2, 1, 2, 4), (2, 3, 5, 5))])
def test_gradcheck_float64(backend, up_shape, skip_shape, device):
    up, skip = inputs(up_shape, skip_shape, torch.float64, device, requires_grad=True)
    op = lambda a, b: unet_fast.crop_concat(a, b, backend=backend)  # noqa: E731
    # The interpreter pays milliseconds per launch: there, check random projections of the
    # Jacobian (gradcheck's fast mode) instead of every column.
    fast_mode = backend == "triton" and device.type == "cpu"
    assert torch.autograd.gradcheck(op, (up, skip), fast_mode=fast_mode)
    assert torch.autograd.gradgradcheck(op, (up, skip), fast_mode=fast_mode)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_and_channels_last_inputs(backend, device):
    up, skip = inputs((2, 6, 5, 7), (2, 4, 9, 12), device=device)
    strided_up = up.transpose(2, 3).contiguous().transpose(2, 3)
    sliced_skip = torch.randn(2, 8, 9, 12, device=device)[:, ::2]
    torch.testing.assert_close(
        unet_fast.crop_concat(strided_up, sliced_skip, backend=backend), expected(strided_up, sliced_skip)
    )
    up_cl, skip_cl = up.to(memory_format=torch.channels_last), skip.to(memory_format=torch.channels_last)
    out = unet_fast.crop_concat(up_cl, skip_cl, backend=backend)
    torch.testing.assert_close(out, expected(up, skip), rtol=0, atol=0)
    if backend != "torch":
        assert out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b in CUSTOM_OPS])
@pytest.mark.parametrize("channels_last", [False, True])
def test_opcheck(backend, channels_last, device):
    forward, backward = CUSTOM_OPS[backend]
    up, skip = inputs((2, 3, 5, 6), (2, 4, 10, 9), device=device, requires_grad=True)
    if channels_last:
        up = up.detach().to(memory_format=torch.channels_last).requires_grad_()
    torch.library.opcheck(forward, (up, skip))
    grad = torch.randn(2, 7, 5, 6, device=device, requires_grad=True)
    torch.library.opcheck(backward, (grad, 3, 10, 9))


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_fullgraph(backend, device):
    torch._dynamo.reset()
    compiled = torch.compile(lambda a, b: unet_fast.crop_concat(a, b, backend=backend) * 2, fullgraph=True)
    up, skip = inputs((2, 3, 5, 6), (2, 4, 10, 9), device=device, requires_grad=True)
    out = compiled(up, skip)
    torch.testing.assert_close(out, 2 * expected(up, skip))
    out.sum().backward()
    assert torch.equal(up.grad, torch.full_like(up, 2.0))
    assert skip.grad.sum().item() == pytest.approx(2 * 4 * 2 * 5 * 6)


def test_environment_variable_forces_a_backend(environment):
    environment.setenv(backends.ENV_VAR, "torch")
    assert backends.resolve_backend("crop_concat", None, torch.device("cpu")) == "torch"
    environment.setenv(backends.ENV_VAR, "cpu")
    assert backends.resolve_backend("crop_concat", None, torch.device("cpu")) == "cpu"
    environment.setenv(backends.ENV_VAR, "fast")
    with pytest.raises(ValueError, match="UNET_FAST_BACKEND must be one of"):
        unet_fast.crop_concat(*inputs((1, 1, 2, 2), (1, 1, 2, 2)))


def test_unknown_or_unavailable_backend_is_refused():
    up, skip = inputs((1, 1, 2, 2), (1, 1, 2, 2))
    with pytest.raises(ValueError, match="backend must be one of"):
        unet_fast.crop_concat(up, skip, backend="fast")
    with pytest.raises(RuntimeError, match="backend='cuda' cannot run unet_fast::crop_concat on cpu"):
        unet_fast.crop_concat(up, skip, backend="cuda")


def test_falls_back_to_torch_with_one_warning_without_the_extension():
    script = """
import sys, warnings
sys.modules["unet_fast._C"] = None  # as if the extension had not been built
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import torch, unet_fast
    for _ in range(3):
        out = unet_fast.crop_concat(torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 4, 4))
        unet_fast.UNet(enc_chs=(1, 2, 4), dec_chs=(4, 2))(torch.ones(1, 1, 28, 28))
print(len([w for w in caught if "C++ extension is not available" in str(w.message)]), tuple(out.shape))
print(unet_fast.ops.available_backends("crop_concat", "cpu"))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                            env={"PATH": "", "TRITON_INTERPRET": "0"})
    count_and_shape, available = result.stdout.splitlines()
    assert count_and_shape == "1 (1, 2, 2, 2)"
    assert available == "['torch']"


def test_kernels_are_registered_for_cpu():
    assert "cpu" in BACKENDS
    assert torch._C._dispatch_has_kernel_for_dispatch_key("unet_fast::crop_concat", "CPU")


@pytest.mark.parametrize(
    "up_shape,skip_shape,dtype,error,match",
    [
        ((1, 2, 4), (1, 2, 4, 4), torch.float32, ValueError, r"up must be 4-D \(N, C, H, W\), got shape \(1, 2, 4\)"),
        ((1, 2, 4, 4), (1, 2, 4, 4, 1), torch.float32, ValueError, "skip must be 4-D"),
        ((1, 2, 4, 4), (1, 2, 4, 4), torch.int64, TypeError, "up must have dtype float16, bfloat16, float32, float64; got int64"),
        ((2, 2, 4, 4), (1, 2, 6, 6), torch.float32, ValueError, "same batch size, got 2 and 1"),
        ((1, 2, 4, 4), (1, 2, 3, 6), torch.float32, ValueError, r"skip's spatial size \(3, 6\) must be at least up's \(4, 4\)"),
    ],
)
def test_bad_inputs_raise_clear_errors(up_shape, skip_shape, dtype, error, match):
    up, skip = torch.zeros(up_shape, dtype=dtype), torch.zeros(skip_shape, dtype=dtype)
    with pytest.raises(error, match=match):
        unet_fast.crop_concat(up, skip)


def test_mismatched_dtypes_and_non_tensors_raise():
    with pytest.raises(TypeError, match="skip has dtype torch.float64 but up has torch.float32"):
        unet_fast.crop_concat(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2, dtype=torch.float64))
    with pytest.raises(TypeError, match="skip must be a torch.Tensor, got list"):
        unet_fast.crop_concat(torch.zeros(1, 1, 2, 2), [[0.0]])


def test_cpp_op_checks_its_own_arguments():
    with pytest.raises(RuntimeError, match=r"skip \(3x6\) must be at least as large as up \(4x4\)"):
        torch.ops.unet_fast.crop_concat(torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 3, 6))
    with pytest.raises(RuntimeError, match="up_channels must be in"):
        torch.ops.unet_fast.crop_concat_backward(torch.zeros(1, 2, 4, 4), 3, 4, 4)


def test_large_batch_parallel_copy_is_exact():
    up, skip = inputs((4, 32, 60, 60), (4, 32, 100, 101))
    torch.testing.assert_close(unet_fast.crop_concat(up, skip, backend="cpu"), expected(up, skip), rtol=0, atol=0)
