"""Where the U-Net's time goes on this CPU: the forward and the training step at 572 split by
stage (the profiler's self time of each op), with the matrix products' achieved rate against
this machine's measured fp32 multiply-add peak (every thread running FMAs at once, measured after
the profiles; a 2048 x 2048 ``torch.mm`` is printed beside it).

    python tools/profile_stages.py [--size 572] [--rounds 3]

Last, the forward's bound: its multiplications with every 3x3 convolution by F(6x6), at the
FMA peak, with nothing else costing time.

Stages: the GEMMs inside the 3x3 convolutions (Winograd's point-wise products, by our AVX-512
or AVX2 kernel, batched or point by point; the first layer's unfolded weight gradient), the
rest of the 3x3 convolutions (input, output and weight transforms, packing, bias and ReLU), the
up-convolutions' GEMMs, oneDNN's direct convolutions, pooling, joins, the loss and allocation.
A GEMM belongs to the op of ours it runs inside.

The profiler records the thread that calls an op, not the others of a parallel region: the 3x3
convolutions make Winograd's products inside their own parallel regions, one GEMM a core, and so
does the up-convolutions' forward by pieces of rows; the profile holds the calling thread's share
of them, and their rate is a core's, against one core's peak. Other GEMMs (the up-convolutions'
backward, the first layer's unfolded weight gradient) are called outside, each on all threads:
their rate is all cores', against all cores' peak. Shares are of the calling thread's time, the
wall time.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

import unet_fast
from unet_fast import _C, reference, tuning

GEMMS = ("aten::bmm", "aten::mm", "aten::addmm", "aten::addmm_")
# Our AVX-512 or AVX2 kernel's products of a piece of tiles (csrc/cpu/point_gemm.cpp): u (points, rows,
# K) and m (points, rows, N) recorded; it runs only inside the 3x3 convolutions, on one core.
OWN_GEMM = "unet_fast::point_products"
# Recorded around ATen's GEMMs of Winograd points, which run on one core each (csrc/cpu/winograd.cpp).
POINT_GEMMS = "unet_fast::point_gemms"
# Recorded around the GEMMs of the up-convolutions' forward by pieces of rows, one core each (csrc/cpu/up_conv.cpp).
UP_CONVOLUTION_PIECES = "unet_fast::up_conv_pieces"
CONVOLUTIONS = ("unet_fast::conv3x3_bias_relu", "unet_fast::crop_concat_conv3x3",
                "unet_fast::conv3x3_bias_relu_backward", "unet_fast::crop_concat_conv3x3_backward")
UP_CONVOLUTIONS = ("unet_fast::up_conv2x2", "unet_fast::up_conv2x2_backward")
POINT_PRODUCTS, CONVOLUTION_GEMMS, UP_CONVOLUTION_PIECE_GEMMS, UP_CONVOLUTION_GEMMS, OTHER_GEMMS = (
    "Winograd's products in the 3x3 convolutions", "other GEMMs in the 3x3 convolutions",
    "GEMMs in the up-convolutions, by pieces", "other GEMMs in the up-convolutions", "other GEMMs")
STAGES = [  # (stage, op names whose self time it is; GEMMs go by the op they run in)
    (POINT_PRODUCTS, ()),
    (CONVOLUTION_GEMMS, ()),
    (UP_CONVOLUTION_PIECE_GEMMS, ()),
    (UP_CONVOLUTION_GEMMS, ()),
    (OTHER_GEMMS, ()),
    ("3x3 convolutions: transforms, packing, bias, ReLU", CONVOLUTIONS),
    ("direct convolutions (oneDNN)", ("aten::mkldnn_convolution", "aten::convolution_backward")),
    ("up-convolutions outside their GEMMs", UP_CONVOLUTIONS),
    ("pooling", ("unet_fast::max_pool2x2", "unet_fast::max_pool2x2_backward")),
    ("joins (crop and concatenate)", ("unet_fast::crop_concat", "unet_fast::crop_concat_backward")),
    ("loss", ("unet_fast::weighted_softmax_cross_entropy", "unet_fast::weighted_softmax_cross_entropy_backward")),
    ("allocation and zeroing", ("aten::empty", "aten::zeros", "aten::zero_", "aten::fill_", "aten::empty_strided")),
]


# GEMM stages whose every GEMM runs on one core (inside a parallel region of ours)
ONE_CORE_STAGES = (POINT_PRODUCTS, UP_CONVOLUTION_PIECE_GEMMS)


def fma_peak_gflops(seconds: float = 2.0) -> list[float]:
    """GFLOP/s of each thread running fp32 FMAs, all at once (csrc/cpu/fma_peak.h)."""
    return _C.cpu_fma_peak_gflops(seconds)


def gemm_gflops(side: int = 2048, rounds: int = 20) -> float:
    """The best of ``rounds`` fp32 ``side`` x ``side`` GEMMs on all threads, in GFLOP/s (after
    three warm-ups: the first runs pay for waking the cores and the allocator)."""
    a, b = torch.randn(side, side), torch.randn(side, side)
    for _ in range(3):
        torch.mm(a, b)
    best = min(_seconds(lambda: torch.mm(a, b)) for _ in range(rounds))
    return 2 * side**3 / best / 1e9


def forward_gflop(size: int) -> dict[str, float]:
    """GFLOP (multiply-adds x 2) of the post's U-Net forward at ``size``: its 3x3 convolutions
    done directly ("direct 3x3"), the same by Winograd F(6x6, 3x3) where they have more than one
    input channel ("F(6x6) products": 8x8 point-wise products a 6x6 block of output, the fewest
    of any algorithm here; F(8x8) is not built, for its fp32 error), and the rest as GEMMs or
    directly ("the rest": the first layer, the up-convolutions, the head). Shapes from a run on
    the meta device."""
    model = reference.UNet().to("meta")
    counts = {"direct 3x3": 0.0, "F(6x6) products": 0.0, "the rest": 0.0}

    def count(module, inputs, output):
        (_, c_in, *_), (_, c_out, height, width) = inputs[0].shape, output.shape
        taps = module.weight.shape[2] * module.weight.shape[3]
        if isinstance(module, torch.nn.ConvTranspose2d):  # each input pixel times all taps
            counts["the rest"] += 2 * c_in * c_out * taps * inputs[0].shape[2] * inputs[0].shape[3] / 1e9
            return
        direct = 2 * c_in * c_out * taps * height * width / 1e9
        if taps == 9:
            counts["direct 3x3"] += direct
        if taps == 9 and c_in > 1:
            counts["F(6x6) products"] += 2 * c_in * c_out * 64 * math.ceil(height / 6) * math.ceil(width / 6) / 1e9
        else:
            counts["the rest"] += direct

    hooks = [m.register_forward_hook(count) for m in model.modules()
             if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    with torch.no_grad():
        model(torch.empty(1, 1, size, size, device="meta"))
    for hook in hooks:
        hook.remove()
    return counts


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _gemm_flops(event) -> float:
    """Multiply-adds x 2 of a GEMM event (ATen's bmm or mm, or ours) from its recorded input shapes."""
    shapes = [s for s in event.input_shapes if s]
    if event.name == OWN_GEMM and len(shapes) == 2:
        (points, rows, k), n = shapes[0], shapes[1][2]
        return 2.0 * points * rows * k * n
    if event.name == "aten::bmm" and len(shapes) >= 2 and len(shapes[0]) == 3:
        (batch, m, k), n = shapes[0], shapes[1][2]
        return 2.0 * batch * m * k * n
    if event.name in ("aten::mm", "aten::addmm", "aten::addmm_") and len(shapes) >= 2:
        first, second = (shapes[0], shapes[1]) if event.name == "aten::mm" else (shapes[1], shapes[2])
        if len(first) == 2 and len(second) == 2:
            return 2.0 * first[0] * first[1] * second[1]
    return 0.0


def _stage(event) -> str | None:
    """The stage an event's self time belongs to: a GEMM by the op of ours it runs in."""
    if event.name == OWN_GEMM:
        return POINT_PRODUCTS
    if event.name in GEMMS:
        owner = event.cpu_parent
        while owner is not None and not owner.name.startswith("unet_fast::"):
            owner = owner.cpu_parent
        if owner is not None and owner.name == POINT_GEMMS:
            return POINT_PRODUCTS
        if owner is not None and owner.name == UP_CONVOLUTION_PIECES:
            return UP_CONVOLUTION_PIECE_GEMMS
        if owner is not None and owner.name in CONVOLUTIONS:
            return CONVOLUTION_GEMMS
        return UP_CONVOLUTION_GEMMS if owner is not None and owner.name in UP_CONVOLUTIONS else OTHER_GEMMS
    return next((name for name, ops in STAGES if event.name in ops), None)


def profile(step, rounds: int) -> tuple[float, float, dict[str, float], dict[str, float]]:
    """(median wall ms, the profiled run's wall ms, ms by stage in it, GEMM GFLOP by stage) of
    ``step`` after warm-ups (the profiler slows what it watches: shares are of its own run)."""
    for _ in range(3):
        step()
    walls = [_seconds(step) * 1e3 for _ in range(rounds)]
    with torch.profiler.profile(record_shapes=True) as prof:
        profiled = _seconds(step) * 1e3
    times = {name: 0.0 for name, _ in STAGES}
    flops = {name: 0.0 for name, _ in STAGES}
    for event in prof.events():
        stage = _stage(event)
        if stage is not None:
            times[stage] += event.self_cpu_time_total / 1e3
            flops[stage] += _gemm_flops(event) / 1e9
    return statistics.median(walls), profiled, times, flops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=572)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    model = unet_fast.UNet(paper_block=True)
    if tuning.measuring():  # settled first: a pass still trying algorithms would be profiled as it tries them
        tuning.tune(model, args.size)
    image = torch.randn(1, 1, args.size, args.size)
    out = model.output_size(args.size)
    target = torch.randint(0, 2, (1, out, out))
    weight = torch.rand(1, out, out) * 10

    def forward():
        with torch.no_grad():
            model(image)

    def train_step():
        loss = unet_fast.weighted_softmax_cross_entropy(model(image), target, weight)
        loss.backward()
        model.zero_grad(set_to_none=True)

    profiles = {label: profile(step, args.rounds) for label, step in (("forward", forward),
                                                                       ("training step", train_step))}
    per_thread = max(fma_peak_gflops(), fma_peak_gflops(), key=sum)  # measured on the warm machine
    core_peak, all_peak = statistics.mean(per_thread), sum(per_thread)
    gemm = max(gemm_gflops(), gemm_gflops())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; fp32 FMA peak {all_peak:.0f} GFLOP/s "
          f"({core_peak:.0f} a core); 2048x2048 torch.mm {gemm:.0f} GFLOP/s (best of 40)")
    for label, (median, wall, times, flops) in profiles.items():
        print(f"\n{label} {args.size}x{args.size}: {median:.0f} ms (median of {args.rounds}); {wall:.0f} ms profiled, "
              "split below")
        print("| stage | ms | share | GFLOP/s | of peak |\n|---|---|---|---|---|")
        for name, _ in STAGES:
            if times[name] < 0.05:
                continue
            rate = flops[name] / (times[name] / 1e3) if flops[name] else None
            one_core = name in ONE_CORE_STAGES
            peak = core_peak if one_core else all_peak
            achieved = f"{rate:.0f}{' a core' if one_core else ''} | {rate / peak:.0%}" if rate else "- | -"
            print(f"| {name} | {times[name]:.0f} | {times[name] / wall:.0%} | {achieved} |")
        rest = wall - sum(times.values())
        print(f"| everything else (Python, autograd, other ops) | {rest:.0f} | {rest / wall:.0%} | - | - |")
    gflop = forward_gflop(args.size)
    bound_ms = (gflop["F(6x6) products"] + gflop["the rest"]) / all_peak * 1e3
    print(f"\nthe forward's bound here: {gflop['F(6x6) products']:.1f} GFLOP of F(6x6) products (for "
          f"{gflop['direct 3x3']:.1f} of direct 3x3 convolutions) and {gflop['the rest']:.1f} of the rest, "
          f"{bound_ms:.0f} ms at the FMA peak with every transform free; the forward ran at "
          f"{bound_ms / profiles['forward'][0]:.0%} of that bound")


if __name__ == "__main__":
    main()
