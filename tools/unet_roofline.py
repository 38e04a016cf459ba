#!/usr/bin/env python3
"""The U-Net's arithmetic and this machine's ceilings, for the roofline note (docs/roofline.md).

    tools/unet_roofline.py [--size 572]

Counts FLOPs (2 x multiply-adds) of every convolution of the paper's U-Net at one input size,
forward and training step (backward = data gradient + weight gradient, twice the forward), the
minimum bytes a forward must move (each activation written once and read once, fp32), and
measures this machine's fp32 and bf16 matrix-multiply rates and copy bandwidth."""

import argparse
import time

import torch

from unet_fast import UNet


def conv_flops(model: UNet, size: int) -> tuple[float, float]:
    """Forward FLOPs of the convolutions and minimum activation bytes (fp32), by hooks."""
    flops = activation_bytes = 0.0

    def count(module, inputs, output):
        nonlocal flops, activation_bytes
        weight = module.weight
        if isinstance(module, torch.nn.ConvTranspose2d):
            macs = inputs[0].numel() * weight.shape[1] * weight.shape[2] * weight.shape[3]
        else:
            macs = output.numel() * weight.shape[1] * weight.shape[2] * weight.shape[3]
        flops += 2 * macs
        activation_bytes += 4 * (inputs[0].numel() + output.numel())

    for module in model.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            module.register_forward_hook(count)
    with torch.device("meta"):
        model(torch.empty(1, 1, size, size))
    return flops, activation_bytes


def _rate(fn, flops: float, repeats: int = 10) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return flops * repeats / (time.perf_counter() - start) / 1e9


def matmul_rate(dtype: torch.dtype, n: int = 2048) -> float:
    """torch.mm (MKL on x86 CPUs)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    return _rate(lambda: a @ b, 2 * n**3)


def onednn_gemm_rate(dtype: torch.dtype, channels: int = 1024, side: int = 64) -> float:
    """A 1x1 convolution, i.e. a GEMM through oneDNN, the library that runs the convolutions
    (MKL's GEMM can be far slower on some CPUs, e.g. AMD)."""
    x = torch.randn(1, channels, side, side, dtype=dtype).to(memory_format=torch.channels_last)
    w = torch.randn(channels, channels, 1, 1, dtype=dtype).to(memory_format=torch.channels_last)
    return _rate(lambda: torch.nn.functional.conv2d(x, w), 2 * channels * channels * side * side)


def measured_copy_bandwidth(megabytes: int = 256, repeats: int = 10) -> float:
    src = torch.ones(megabytes * 2**20 // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    start = time.perf_counter()
    for _ in range(repeats):
        dst.copy_(src)
    return 2 * src.numel() * 4 * repeats / (time.perf_counter() - start) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=572)
    args = parser.parse_args()
    with torch.device("meta"):
        model = UNet()
    forward, activation_bytes = conv_flops(model, args.size)
    parameter_bytes = 4 * sum(p.numel() for p in model.parameters())
    mm32, mm16 = matmul_rate(torch.float32), matmul_rate(torch.bfloat16)
    fp32, bf16 = onednn_gemm_rate(torch.float32), onednn_gemm_rate(torch.bfloat16)
    copy = measured_copy_bandwidth()
    print(f"U-Net at {args.size}x{args.size}, batch 1")
    print(f"  forward: {forward / 1e9:.1f} GFLOP; training step: {3 * forward / 1e9:.1f} GFLOP")
    print(f"  minimum bytes of a forward: {(activation_bytes + parameter_bytes) / 1e9:.2f} GB "
          f"({forward / (activation_bytes + parameter_bytes):.0f} FLOP/byte)")
    print(f"this machine ({torch.get_num_threads()} threads): oneDNN GEMM fp32 {fp32:.0f} GFLOP/s, "
          f"bf16 {bf16:.0f} GFLOP/s; torch.mm fp32 {mm32:.0f}, bf16 {mm16:.0f} GFLOP/s; copy {copy:.1f} GB/s")
    print(f"  floors: forward fp32 {forward / fp32 / 1e9:.2f} s, bf16 {forward / bf16 / 1e9:.2f} s; "
          f"training step fp32 {3 * forward / fp32 / 1e9:.2f} s, bf16 {3 * forward / bf16 / 1e9:.2f} s")


if __name__ == "__main__":
    main()
