"""weighted_softmax_cross_entropy on every backend against the composite: all option
combinations, dtypes, layouts, gradients (float64 gradcheck), opcheck, torch.compile, numerics
at the edges and bad inputs."""

import itertools
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import unet_fast
from unet_fast.bench import peak_memory_mb
from unet_fast.ops.weighted_cross_entropy import weighted_softmax_cross_entropy_composite as composite

from conftest import backends_for

BACKENDS = backends_for("weighted_softmax_cross_entropy")
CUSTOM_OPS = {
    "cpu": torch.ops.unet_fast.weighted_softmax_cross_entropy,
    "cuda": torch.ops.unet_fast.weighted_softmax_cross_entropy,
    "triton": torch.ops.unet_fast.weighted_softmax_cross_entropy_triton,
}
# Tolerances against the composite: fp32 kernels use their own exp/log (about 2 ulp).
TOL = {torch.float64: dict(rtol=1e-12, atol=1e-12), torch.float32: dict(rtol=1e-5, atol=1e-6),
       torch.bfloat16: dict(rtol=2e-2, atol=2e-2), torch.float16: dict(rtol=2e-3, atol=2e-3)}


def make(n=2, classes=3, h=7, w=9, dtype=torch.float32, device="cpu", scale=3.0, ignore=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, classes, h, w, generator=g) * scale).to(dtype)
    target = torch.randint(0, classes, (n, h, w), generator=g)
    if ignore:
        target[0, 0, : min(3, w)] = -100
    weight = torch.rand(n, h, w, generator=g) * 5
    class_weight = torch.rand(classes, generator=g) + 0.5
    return [t.to(device) for t in (logits, target, weight, class_weight)]


def run(backend, logits, target, weight, class_weight, reduction, **kwargs):
    logits = logits.detach().clone().requires_grad_()
    loss = unet_fast.weighted_softmax_cross_entropy(
        logits, target, weight, class_weight=class_weight, reduction=reduction, backend=backend, **kwargs
    )
    grad_out = torch.linspace(0.5, 1.5, loss.numel(), dtype=loss.dtype, device=loss.device).reshape(loss.shape)
    loss.backward(grad_out)
    return loss.detach(), logits.grad


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "reduction,use_weight,use_class_weight,ignore",
    list(itertools.product(["mean", "sum", "none"], [True, False], [True, False], [True, False])),
)
def test_every_option_combination_matches_the_composite(backend, reduction, use_weight, use_class_weight, ignore, device):
    logits, target, weight, class_weight = make(device=device, ignore=ignore)
    weight = weight if use_weight else None
    class_weight = class_weight if use_class_weight else None
    got = run(backend, logits, target, weight, class_weight, reduction)
    want = run("torch", logits, target, weight, class_weight, reduction)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **TOL[torch.float32])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("classes", [2, 5, 64])
def test_dtypes_and_class_counts(backend, dtype, classes, device):
    logits, target, weight, class_weight = make(classes=classes, dtype=dtype, device=device)
    got = run(backend, logits, target, weight, class_weight, "mean")
    want = run("torch", logits, target, weight, class_weight, "mean")
    assert got[0].dtype == dtype and got[1].dtype == dtype
    for g, w in zip(got, want):
        torch.testing.assert_close(g.float(), w.float(), **TOL[dtype])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(1, 2, 1, 1), (3, 4, 1, 17), (1, 3, 300, 5)])
def test_odd_shapes_including_one_pixel(backend, shape, device):
    n, c, h, w = shape
    logits, target, weight, class_weight = make(n, c, h, w, device=device, ignore=False)
    for reduction in ("mean", "none"):
        got = run(backend, logits, target, weight, class_weight, reduction)
        want = run("torch", logits, target, weight, class_weight, reduction)
        for g, w_ in zip(got, want):
            torch.testing.assert_close(g, w_, **TOL[torch.float32])


@pytest.mark.parametrize("backend", BACKENDS)
def test_only_class_weight_mean_equals_f_cross_entropy(backend, device):
    logits, target, _, class_weight = make(device=device)
    got = unet_fast.weighted_softmax_cross_entropy(logits, target, class_weight=class_weight, backend=backend)
    want = F.cross_entropy(logits, target, weight=class_weight, ignore_index=-100)
    torch.testing.assert_close(got, want, **TOL[torch.float32])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("classes", [2, 3])  # two classes take a one-exp path on the CPU
def test_large_logits_are_stable(backend, classes, device):
    logits, target, weight, class_weight = make(classes=classes, device=device, scale=1e4)
    got = run(backend, logits, target, weight, class_weight, "sum")
    want = run("torch", logits, target, weight, class_weight, "sum")
    assert torch.isfinite(got[0]).all() and torch.isfinite(got[1]).all()
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-2)
    torch.testing.assert_close(got[1], want[1], **TOL[torch.float32])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("classes", [2, 3])
@pytest.mark.parametrize("nan_class", [0, -1])
def test_nan_logits_give_nan_not_zero(backend, classes, nan_class, device):
    logits, target, weight, _ = make(classes=classes, device=device, ignore=False)
    logits[1, nan_class, 3, 4] = float("nan")
    loss = unet_fast.weighted_softmax_cross_entropy(logits, target, weight, reduction="none", backend=backend)
    assert torch.isnan(loss[1, 3, 4])
    assert torch.isfinite(loss[0]).all()
    assert torch.isnan(unet_fast.weighted_softmax_cross_entropy(logits, target, weight, backend=backend))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_two_classes_with_tied_logits(backend, dtype, device):
    logits, target, weight, class_weight = make(classes=2, dtype=dtype, device=device)
    logits[:, 1] = logits[:, 0]  # softmax 1/2 each: loss v log 2
    logits[0, :, :2] = torch.tensor([[1e4], [-1e4]], dtype=dtype)  # and far apart
    got = run(backend, logits, target, weight, class_weight, "none")
    want = run("torch", logits, target, weight, class_weight, "none")
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **TOL[torch.float32])


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_and_channels_last_inputs(backend, device):
    logits, target, weight, class_weight = make(n=2, classes=4, h=6, w=8, device=device)
    layouts = [
        (logits.to(memory_format=torch.channels_last), target, weight),
        (logits.transpose(2, 3).contiguous().transpose(2, 3), target.transpose(1, 2).contiguous().transpose(1, 2), weight),
        (torch.stack([logits, logits], 2).flatten(1, 2)[:, ::2], target, torch.stack([weight, weight], -1)[..., 0]),
    ]
    want = run("torch", logits, target, weight, class_weight, "none")
    for z, t, w in layouts:
        got = run(backend, z, t, w, class_weight, "none")
        for g, w_ in zip(got, want):
            torch.testing.assert_close(g, w_, **TOL[torch.float32])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("classes", [2, 3])
def test_gradcheck_and_gradgradcheck_float64(backend, reduction, classes, device):
    logits, target, weight, class_weight = make(n=1, classes=classes, h=3, w=4, dtype=torch.float64, device=device)
    logits.requires_grad_()
    fast_mode = backend == "triton" and device.type == "cpu"

    def fn(z):
        return unet_fast.weighted_softmax_cross_entropy(z, target, weight, class_weight=class_weight,
                                                        reduction=reduction, backend=backend)

    assert torch.autograd.gradcheck(fn, (logits,), fast_mode=fast_mode)
    assert torch.autograd.gradgradcheck(fn, (logits,), fast_mode=fast_mode)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b in CUSTOM_OPS])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_opcheck(backend, reduction, device):
    logits, target, weight, class_weight = make(device=device)
    logits.requires_grad_()
    torch.library.opcheck(CUSTOM_OPS[backend], (logits, target, weight, class_weight, -100, reduction, True))
    torch.library.opcheck(CUSTOM_OPS[backend], (logits.detach(), target, None, None, -100, reduction, False))


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_fullgraph(backend, device):
    torch._dynamo.reset()
    logits, target, weight, class_weight = make(device=device)

    def loss_fn(z, t, w):
        return unet_fast.weighted_softmax_cross_entropy(z * 2, t, w, class_weight=class_weight, backend=backend)

    compiled = torch.compile(loss_fn, fullgraph=True)
    z1 = logits.clone().requires_grad_()
    z2 = logits.clone().requires_grad_()
    got, want = compiled(z1, target, weight), loss_fn(z2, target, weight)
    got.backward()
    want.backward()
    torch.testing.assert_close(got, want, **TOL[torch.float32])
    torch.testing.assert_close(z1.grad, z2.grad, **TOL[torch.float32])


@pytest.mark.parametrize("backend", BACKENDS)
def test_labels_out_of_range_raise_on_cpu(backend):
    logits, target, weight, _ = make()
    target[1, 2, 3] = 3
    with pytest.raises((ValueError, RuntimeError), match=r"label 3.*\[0, 3\) or ignore_index \(-100\)"):
        unet_fast.weighted_softmax_cross_entropy(logits, target, weight, backend=backend)


def test_module_wraps_the_op():
    logits, target, weight, class_weight = make()
    loss = unet_fast.WeightedSoftmaxCrossEntropyLoss(class_weight=class_weight, reduction="sum")
    torch.testing.assert_close(
        loss(logits, target, weight), composite(logits, target, weight, class_weight, -100, "sum"), **TOL[torch.float32]
    )
    assert "class_weight" in dict(loss.named_buffers())


@pytest.mark.parametrize("backend", BACKENDS)
def test_backward_can_run_twice_and_hands_out_its_own_gradient_each_time(backend, device):
    logits, target, weight, _ = make(device=device)
    hidden = logits.clone().requires_grad_()
    loss = unet_fast.weighted_softmax_cross_entropy(hidden, target, weight, backend=backend)
    (first,) = torch.autograd.grad(loss, hidden, retain_graph=True)
    want = first.clone()
    first.zero_()
    (second,) = torch.autograd.grad(loss, hidden, retain_graph=True)
    (doubled,) = torch.autograd.grad(loss, hidden, torch.tensor(2.0, device=device))
    torch.testing.assert_close(second, want)
    torch.testing.assert_close(doubled, 2 * want)
    reference_logits = logits.clone().requires_grad_()
    composite(reference_logits, target, weight, None, -100, "mean").backward()
    torch.testing.assert_close(second, reference_logits.grad, **TOL[torch.float32])


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "torch"])
def test_forward_backward_allocates_only_the_gradient(backend, device):
    logits, target, weight, _ = make(n=2, classes=2, h=64, w=64, device=device, ignore=False)
    logits.requires_grad_()

    def step():
        loss = unet_fast.weighted_softmax_cross_entropy(logits, target, weight, backend=backend)
        torch.autograd.grad(loss, logits)

    step()
    gradient_mb = logits.numel() * logits.element_size() / 2**20
    # the gradient made in the forward, and the one the backward hands out
    assert peak_memory_mb(step, logits.device) < 2.5 * gradient_mb


@pytest.mark.parametrize(
    "change,error,match",
    [
        (lambda a: a.update(logits=a["logits"][0]), ValueError, r"logits must be 4-D"),
        (lambda a: a.update(target=a["target"].float()), TypeError, "target must have dtype"),
        (lambda a: a.update(target=a["target"][:, :-1]), ValueError, "target must have shape"),
        (lambda a: a.update(weight=a["weight"][:1]), ValueError, "weight must have the shape of target"),
        (lambda a: a.update(weight=a["weight"].requires_grad_()), ValueError, "weight requires grad, but gradients flow to the logits only"),
        (lambda a: a.update(class_weight=a["class_weight"][:2]), ValueError, "class_weight must have C = 3 entries"),
        (lambda a: a.update(class_weight=a["class_weight"].requires_grad_()), ValueError, "class_weight requires grad"),
        (lambda a: a.update(reduction="avg"), ValueError, "reduction must be one of"),
        (lambda a: a.update(logits=a["logits"].long()), TypeError, "logits must have dtype"),
    ],
)
def test_bad_inputs_raise_clear_errors(change, error, match):
    logits, target, weight, class_weight = make()
    args = dict(logits=logits, target=target, weight=weight, class_weight=class_weight, reduction="mean")
    change(args)
    with pytest.raises(error, match=match):
        unet_fast.weighted_softmax_cross_entropy(
            args["logits"], args["target"], args["weight"], class_weight=args["class_weight"], reduction=args["reduction"]
        )


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b == "triton"])
def test_a_label_out_of_range_reads_no_class_weight_past_the_end(backend, device):
    # The kernel itself (the op checks CPU labels before it): a GPU kernel cannot raise, so a
    # bad label's loss is NaN, and the class weights are read only for labels in range. In a
    # child process: an out-of-bounds read crashed it.
    code = f"""
import torch, unet_fast.ops.weighted_cross_entropy
z = torch.randn(1, 2, 4, 4, device="{device}")
t = torch.zeros(1, 4, 4, dtype=torch.long, device="{device}")
t[0, 1, 1] = 10**11
loss, _ = torch.ops.unet_fast.weighted_softmax_cross_entropy_triton(
    z, t, None, torch.tensor([1.0, 2.0], device="{device}"), -100, "none", False)
assert loss[0, 1, 1].isnan() and loss.isnan().sum() == 1, loss
"""
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stderr[-2000:]
