"""Every 3x3 convolution of the U-Net at 572 (with bias and ReLU), each pass alone (forward, data
gradient, weight gradient), CPU, in fp32 and bf16:
- reference: the reference's form, NCHW (F.conv2d + F.relu; aten's convolution_backward for
  the one gradient),
- every algorithm unet_fast.tuning can choose from for that pass on this machine, by name
  (direct, nchw, winograd2/4/6 and their products by ATen's GEMM winogradN-aten, nnpack, unfold,
  few; bf16 natively and float:NAME, in fp32),
- tuned: the choice unet_fast.tuning measured (settled before timing).
The backward passes start from a given output gradient (ours also applies the ReLU mask).

    pytest benchmarks/test_conv_layers.py --benchmark-group-by=param:layer,param:kind,param:precision
"""

import pytest
import torch
import torch.nn.functional as F

from unet_fast import memory, settings, tuning
from unet_fast.ops import available_backends

from conftest import DEVICE, rounds

# (C_in, C_out, input side) of the 18 3x3 convolutions, top to bottom and back up.
LAYERS = [(1, 64, 572), (64, 64, 570), (64, 128, 284), (128, 128, 282), (128, 256, 140), (256, 256, 138),
          (256, 512, 68), (512, 512, 66), (512, 1024, 32), (1024, 1024, 30), (1024, 512, 56), (512, 512, 54),
          (512, 256, 104), (256, 256, 102), (256, 128, 200), (128, 128, 198), (128, 64, 392), (64, 64, 390)]
QUICK = {"layer": [(256, 512, 68)], "precision": ["fp32"], "implementation": ["reference", "tuned", "winograd4"]}
CPU_EXTENSION = DEVICE.type == "cpu" and "cpu" in available_backends("conv3x3_bias_relu", DEVICE)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def shape(layer, precision, kind):
    c_in, c_out, side = layer
    return tuning.ConvShape(kind, str(DTYPES[precision]).removeprefix("torch."), 1, c_in, c_out, side - 2, side - 2)


def cases():
    found = []
    for layer in LAYERS:
        for precision in DTYPES:
            for kind in tuning.PASSES:
                names = ["reference"]
                if CPU_EXTENSION:
                    names += ["tuned", *tuning.candidates(shape(layer, precision, kind))]
                found += [(layer, precision, kind, name) for name in names]
    return found


def reference_step(kind, x, weight, bias, grad):
    if kind == "forward":
        return lambda: F.relu(F.conv2d(x, weight, bias))
    mask = [kind == "data_grad", kind == "weight_grad", False]
    return lambda: torch.ops.aten.convolution_backward(grad, x, weight, [weight.shape[0]], [1, 1], [0, 0], [1, 1],
                                                       False, [0, 0], 1, mask)


def cpu_step(kind, algorithm, x, weight, bias, grad):
    x, weight, grad = (t.contiguous(memory_format=torch.channels_last) for t in (x, weight, grad))
    if kind == "forward":
        return lambda: torch.ops.unet_fast.conv3x3_bias_relu(x, weight, bias, True, algorithm)
    out = torch.ops.unet_fast.conv3x3_bias_relu(x, weight, bias, True, "direct")
    data = kind == "data_grad"
    algorithms = (algorithm, "direct") if data else ("direct", algorithm)
    return lambda: torch.ops.unet_fast.conv3x3_bias_relu_backward(grad, x, weight, out, [data, not data, False],
                                                                  *algorithms)


def settle(kind, x, weight, bias, grad, monkeypatch):
    """This pass's measured choice (measuring on, the user's cache)."""
    monkeypatch.setenv("UNET_FAST_TUNE", "1")
    monkeypatch.delenv("UNET_FAST_CACHE_DIR", raising=False)
    settings.reload()
    pass_shape = tuning.ConvShape.of(kind, x, weight)
    while tuning.exploring(pass_shape):
        tuning.run(pass_shape, lambda algorithm: cpu_step(kind, algorithm, x, weight, bias, grad)())
    return tuning.settled(pass_shape).algorithm


@pytest.mark.parametrize("layer,precision,kind,implementation", cases(),
                         ids=lambda value: "{}to{}at{}".format(*value) if isinstance(value, tuple) else value)
def test_conv3x3_layer(benchmark, layer, precision, kind, implementation, monkeypatch):
    c_in, c_out, side = layer
    dtype = DTYPES[precision]
    x = torch.randn(1, c_in, side, side, device=DEVICE).to(dtype)
    weight = (torch.randn(c_out, c_in, 3, 3, device=DEVICE) * (2 / (9 * c_in)) ** 0.5).to(dtype)
    bias = torch.randn(c_out, device=DEVICE).to(dtype)
    grad = torch.randn(1, c_out, side - 2, side - 2, device=DEVICE).to(dtype)
    if implementation == "reference":
        step = reference_step(kind, x, weight, bias, grad)
    else:
        algorithm = settle(kind, x, weight, bias, grad, monkeypatch) if implementation == "tuned" else implementation
        benchmark.extra_info["algorithm"] = algorithm
        # Each case on its own warm buffers, as in a training step: the blocks earlier cases
        # left would fill the pool to its bound and leave this one faulting in fresh memory.
        memory.empty_cpu_pool()
        step = cpu_step(kind, algorithm, x, weight, bias, grad)
    benchmark.group = f"conv3x3+bias+ReLU {precision} {kind}, {c_in}->{c_out} at {side}x{side}"
    with torch.no_grad():
        benchmark.pedantic(step, rounds=rounds(5), iterations=1, warmup_rounds=1)
