"""The drop-in UNet against the reference: weights, state_dicts, outputs and gradients."""

import pytest
import torch
import torch.nn.functional as F

import unet_fast
from unet_fast import memory, reference, unet
from unet_fast.ops import backends

from conftest import DEVICE, backends_for, onednn_emulates

SMALL = dict(enc_chs=(1, 4, 8, 16), dec_chs=(16, 8, 4))
# Float32 tolerance for outputs and parameter gradients: the fused convolutions run
# channels_last and sum in another order than the reference's.
TOL = dict(rtol=1e-4, atol=1e-5)


def twins(**kwargs):
    """A reference and a drop-in UNet holding the same weights."""
    torch.manual_seed(0)
    ref = reference.UNet(**{k: v for k, v in kwargs.items() if k not in ("backend", "paper_block")})
    fast = unet_fast.UNet(**kwargs)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def assert_same_outputs_and_gradients(ref, fast, x):
    out_ref, out_fast = ref(x), fast(x)
    torch.testing.assert_close(out_fast, out_ref, **TOL)
    grad_out = torch.randn_like(out_ref)
    out_ref.backward(grad_out)
    out_fast.backward(grad_out)
    fast_params = dict(fast.named_parameters())
    for name, param in ref.named_parameters():
        torch.testing.assert_close(fast_params[name].grad, param.grad, **TOL, msg=name)


def test_same_seed_gives_the_reference_weights():
    torch.manual_seed(1)
    ref = reference.UNet()
    torch.manual_seed(1)
    fast = unet_fast.UNet()
    assert list(fast.state_dict()) == list(ref.state_dict())
    for name, value in ref.state_dict().items():
        assert torch.equal(fast.state_dict()[name], value), name


def test_load_state_dict_both_ways():
    ref, fast = reference.UNet(**SMALL), unet_fast.UNet(**SMALL)
    fast.load_state_dict(ref.state_dict(), strict=True)
    other = reference.UNet(**SMALL)
    other.load_state_dict(fast.state_dict(), strict=True)
    for name, value in ref.state_dict().items():
        assert torch.equal(other.state_dict()[name], value)


def test_paper_size_572_gives_388_and_equals_the_reference():
    ref, fast = twins()
    x = torch.randn(1, 1, 572, 572)
    with torch.no_grad():
        out = fast(x)
        assert out.shape == (1, 2, 388, 388)
        torch.testing.assert_close(out, ref(x), **TOL)


# The Triton interpreter is too slow for full widths; it is covered at small widths below.
FULL_WIDTH_BACKENDS = [b for b in backends_for("crop_concat") if b != "triton" or DEVICE.type == "cuda"]


@pytest.mark.parametrize("backend", FULL_WIDTH_BACKENDS)
def test_full_width_outputs_and_gradients_equal_the_reference(backend):
    ref, fast = twins(backend=backend)
    assert_same_outputs_and_gradients(ref, fast, torch.randn(1, 1, 188, 188))


@pytest.mark.parametrize("backend", backends_for("crop_concat"))
def test_small_width_outputs_and_gradients_equal_the_reference(backend):
    # 44, the smallest input these widths take (both joins still crop: 40 -> 8, 16 -> 8): the
    # Triton interpreter's time grows with the pixels (94 s at 2 x 60 x 60, 46 s here)
    ref, fast = twins(**SMALL, backend=backend)
    assert_same_outputs_and_gradients(ref, fast, torch.randn(2, 1, 44, 44))


def test_default_backend_is_the_cpp_kernel_on_cpu():
    assert unet_fast.ops.available_backends("crop_concat", "cpu")[0] == "cpu"


def test_retain_dim_matches_the_reference():
    ref, fast = twins(**SMALL, retain_dim=True, out_sz=(44, 44))
    x = torch.randn(1, 1, 44, 44)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), ref(x), **TOL)
        assert fast(x).shape == (1, 2, 44, 44)


@pytest.mark.parametrize("channels,layout", [(1, torch.contiguous_format), (1, torch.channels_last),
                                             (3, torch.contiguous_format), (3, torch.channels_last)])
@pytest.mark.parametrize("retain_dim", [False, True])
def test_output_has_the_references_layout(channels, layout, retain_dim):
    kwargs = dict(enc_chs=(channels, 4, 8, 16), dec_chs=(16, 8, 4), retain_dim=retain_dim, out_sz=(44, 44))
    ref, fast = twins(**kwargs)
    x = torch.randn(2, channels, 44, 44).contiguous(memory_format=layout)
    with torch.no_grad():
        want, got = ref(x), fast(x)
    assert got.stride() == want.stride()
    if layout == torch.contiguous_format:
        got.view(2, -1)  # as a user of the post's model may


@pytest.mark.parametrize("backend", FULL_WIDTH_BACKENDS)
@pytest.mark.parametrize("kind", ["one pixel", "all"])
def test_nan_input_gives_nan_wherever_the_reference_does(backend, kind):
    # Winograd may widen a NaN to the rest of its output block (docs/winograd.md): the
    # reference's NaN outputs are a subset of ours, never the other way round.
    ref, fast = twins(**SMALL, backend=backend)
    x = torch.randn(1, 1, 60, 60, device=DEVICE)
    if kind == "all":
        x.fill_(float("nan"))
    else:
        x[0, 0, 30, 29] = float("nan")
    with torch.no_grad():
        want, got = ref(x).isnan(), fast(x).isnan()
    assert want.any() and got[want].all()


@pytest.mark.parametrize("backend", FULL_WIDTH_BACKENDS)
def test_double_backward_gives_the_references_second_derivatives(backend):
    # A gradient penalty: the input's gradient as a graph, then its norm's gradient.
    ref, fast = twins(**SMALL, backend=backend)
    x = torch.randn(1, 1, 44, 44, device=DEVICE)
    second = []
    for model in (ref, fast):
        inputs = x.clone().requires_grad_()
        (g,) = torch.autograd.grad(model(inputs).sum(), inputs, create_graph=True)
        second.append(torch.autograd.grad((g**2).sum(), list(model.parameters()), allow_unused=True))
    nonzero = 0
    for (name, param), want, got in zip(ref.named_parameters(), *second):
        if want is not None:  # None: the gradient does not depend on it (the head's bias)
            assert got is not None, name
            torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-5, msg=name)
            nonzero += bool(want.abs().sum() > 0)
        elif got is not None:
            assert not got.any(), name
    assert nonzero >= 7


@pytest.mark.skipif(not backends.extension_loaded(), reason="the pool belongs to the C++ extension")
def test_the_heads_gradients_come_from_the_pool_and_equal_the_convolutions():
    head = torch.nn.Conv2d(16, 2, 1)
    x = torch.randn(1, 16, 132, 132, requires_grad=True)  # its gradient: 1.06 MiB, pooled
    grad_out = torch.randn(1, 2, 132, 132)
    want = torch.autograd.grad(head(x), (x, head.weight, head.bias), grad_out)
    out = unet._head(head, x)
    torch.testing.assert_close(out, head(x), rtol=0, atol=0)
    before = memory.cpu_pool_stats().in_use_bytes
    got = torch.autograd.grad(out, (x, head.weight, head.bias), grad_out)
    assert memory.cpu_pool_stats().in_use_bytes >= before + got[0].nbytes
    for w, g in zip(want, got):
        torch.testing.assert_close(g, w, rtol=0, atol=0)


def test_hooks_on_the_head_still_run():
    ref, fast = twins(**SMALL)
    seen = []
    fast.head.register_forward_hook(lambda module, args, out: seen.append(out.shape))
    fast.head.register_full_backward_hook(lambda module, grad_in, grad_out: seen.append("backward"))
    x = torch.randn(1, 1, 44, 44)
    out = fast(x)
    out.sum().backward()
    assert seen == [out.shape, "backward"]
    torch.testing.assert_close(out, ref(x), **TOL)


def test_the_pooled_head_has_first_and_second_derivatives():
    head = torch.nn.Conv2d(3, 2, 1).double()
    x = torch.randn(2, 3, 5, 4, dtype=torch.float64, requires_grad=True)
    apply = lambda x, weight, bias: unet._PooledConv1x1.apply(x, weight, bias)
    assert torch.autograd.gradcheck(apply, (x, head.weight, head.bias))
    assert torch.autograd.gradgradcheck(apply, (x, head.weight, head.bias))


def test_channels_last_input_gives_the_same_result():
    ref, fast = twins(**SMALL)
    x = torch.randn(2, 1, 44, 44)
    with torch.no_grad():
        torch.testing.assert_close(fast(x.to(memory_format=torch.channels_last)), ref(x), **TOL)


def test_paper_block_puts_a_relu_after_both_convolutions():
    ref, fast = twins(**SMALL, paper_block=True)
    x = torch.randn(1, 1, 44, 44)

    def block(b, t):
        return F.relu(b.conv2(F.relu(b.conv1(t))))

    with torch.no_grad():
        features, t = [], x
        for level, b in enumerate(ref.encoder.enc_blocks):
            t = block(b, F.max_pool2d(t, 2) if level else t)
            features.append(t)
        for up, b, skip in zip(ref.decoder.upconvs, ref.decoder.dec_blocks, features[-2::-1]):
            u = up(t)
            t = block(b, torch.cat([u, reference.center_crop(skip, u.shape[-2:])], 1))
        torch.testing.assert_close(fast(x), ref.head(t), **TOL)
        assert not torch.allclose(fast(x), ref(x))


def test_size_helpers():
    model = unet_fast.UNet()
    assert model.output_size(572) == 388
    assert model.valid_input_sizes(500, 600) == [508, 524, 540, 556, 572, 588]
    assert unet_fast.UNet(**SMALL).output_size(44) == 4


@pytest.mark.parametrize(
    "shape,match",
    [
        ((1, 1, 570, 572), r"input height 570 .*odd.*Nearest valid sizes: 556 and 572"),
        ((1, 1, 572, 100), r"input width 100 .*smallest valid size is 188"),
        ((1, 3, 572, 572), r"x must be \(N, 1, H, W\)"),
        ((1, 572, 572), r"x must be \(N, 1, H, W\)"),
    ],
)
def test_invalid_inputs_raise_clear_errors(shape, match):
    with pytest.raises(ValueError, match=match):
        unet_fast.UNet()(torch.zeros(shape))


@pytest.mark.parametrize(
    "enc_chs,dec_chs,match",
    [
        ((1, 4, 8), (16, 4), r"dec_chs\[0\] \(16\) must equal enc_chs\[-1\] \(8\)"),
        ((1, 4, 8), (8, 4, 2), r"2 decoder stages need 3 encoder blocks"),
        ((1, 4, 8, 16), (16, 4, 2), r"dec_chs\[0\] must be 12"),
    ],
)
def test_inconsistent_widths_raise(enc_chs, dec_chs, match):
    with pytest.raises(ValueError, match=match):
        unet_fast.UNet(enc_chs, dec_chs)


@pytest.mark.parametrize("backend", FULL_WIDTH_BACKENDS)
def test_channels_last_input_gives_the_same_output(backend):
    ref, fast = twins(**SMALL, backend=backend)
    x = torch.randn(2, 1, 60, 60, device=DEVICE)
    with torch.no_grad():
        torch.testing.assert_close(fast(x.contiguous(memory_format=torch.channels_last)), ref(x), **TOL)


def test_bf16_autocast_matches_the_reference_under_autocast():
    ref, fast = twins(**SMALL)
    x = torch.randn(2, 1, 60, 60)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_fast, out_ref = fast(x), ref(x)
    assert out_fast.dtype == torch.bfloat16
    # Both round activations to bf16 (8 bits of mantissa) at every layer.
    torch.testing.assert_close(out_fast.float(), out_ref.float(), rtol=0.05, atol=0.05)
    out_fast.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in fast.parameters())


def relative_error(got, want):
    return ((got.double() - want.double()).norm() / want.double().norm()).item()


@pytest.mark.skipif(onednn_emulates(torch.bfloat16),
                    reason="oneDNN emulates bf16 on this CPU: no bf16 Winograd, and the reference's bf16 run takes seconds")
def test_bf16_autocast_full_width_is_as_close_to_fp32_as_the_reference():
    # At full width the CPU backend runs some bf16 layers as Winograd F(2x2) with bf16 GEMMs
    # (256 channels and more, where oneDNN runs bf16 natively); its output and every parameter
    # gradient must stay about as close to the fp32 reference's as the reference's own bf16
    # autocast run is.
    ref, fast = twins()
    x = torch.randn(1, 1, 252, 252)
    grad_out = torch.randn(1, 2, 68, 68)
    out32 = ref(x)
    out32.backward(grad_out)
    grads32 = {name: p.grad.clone() for name, p in ref.named_parameters()}
    ref.zero_grad()
    results = {}
    for name, model in (("reference", ref), ("fast", fast)):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
        out.float().backward(grad_out)
        results[name] = (out, {n: p.grad for n, p in model.named_parameters()})
    out_error = {name: relative_error(out, out32) for name, (out, _) in results.items()}
    assert out_error["fast"] <= max(2 * out_error["reference"], 1e-2), out_error
    for param in grads32:
        errors = {name: relative_error(grads[param], grads32[param]) for name, (_, grads) in results.items()}
        assert errors["fast"] <= max(2 * errors["reference"], 3e-2), (param, errors)


def test_bf16_autocast_runs_the_head_in_fp32():
    # ATen's bf16 1x1 convolution is an unfolded one where oneDNN lacks bf16; in fp32 the head
    # costs next to nothing anywhere. The logits still come back in the autocast dtype.
    from torch.utils._python_dispatch import TorchDispatchMode

    class ConvolutionDtypes(TorchDispatchMode):
        seen = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten.convolution.default:
                self.seen.append((args[0].dtype, args[1].dtype))
            return func(*args, **(kwargs or {}))

    _, fast = twins(**SMALL)
    with torch.autocast("cpu", dtype=torch.bfloat16), ConvolutionDtypes() as mode:
        out = fast(torch.randn(1, 1, 60, 60))
    assert out.dtype == torch.bfloat16
    assert mode.seen == [(torch.float32, torch.float32)]
