#!/usr/bin/env python3
"""The markdown report of tools/gpu_check.sh: the machine, the build, the test suite's result,
each op and the U-Net step against the composite, eager and under torch.compile, the Triton
convolutions against the default ones, and the tile each Triton convolution autotuned to.

    python tools/gpu_report.py --report REPORT.md --tests-log LOG [--build-log LOG]
                               [--device cuda] [--size 572] [--rounds 5]

Timings are medians of alternating runs in this process (unet_fast.bench.compare)."""

from __future__ import annotations

import argparse
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

import torch

import unet_fast
from unet_fast import bench, reference


def machine(device: torch.device) -> list[str]:
    lines = [f"- unet_fast {unet_fast.__version__}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
             f"Python {platform.python_version()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} threads"]
    try:
        import triton

        lines.append(f"- Triton {triton.__version__}{' (interpreter)' if os.environ.get('TRITON_INTERPRET') == '1' else ''}")
    except ImportError:
        lines.append("- Triton not installed")
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        lines.append(f"- {properties.name}, sm_{properties.major}{properties.minor}, "
                     f"{properties.multi_processor_count} SMs, {properties.total_memory / 2**30:.0f} GiB")
    else:
        lines.append(f"- no GPU: a dry run on the CPU ({platform.processor() or platform.machine()})")
    return lines


def tests_summary(log: Path) -> list[str]:
    """pytest's closing line and its failures, from the log of its run."""
    text = log.read_text(errors="replace") if log.exists() else ""
    summary = [line.strip("= ") for line in text.splitlines() if re.search(r"\d+ (passed|failed|error)", line)]
    failures = [line for line in text.splitlines() if line.startswith(("FAILED", "ERROR"))]
    lines = [f"- {summary[-1] if summary else 'no pytest summary: the run stopped early (see the log)'}"]
    lines += [f"  - `{line}`" for line in failures[:40]]
    if len(failures) > 40:
        lines.append(f"  - ... and {len(failures) - 40} more")
    return lines


def comparison_rows(results: list[bench.Comparison]) -> list[str]:
    rows = ["| comparison | ours ms | other ms | speed-up | peak MiB ours / other |", "|---|---|---|---|---|"]
    for r in results:
        rows.append(f"| {r.name} | {r.ours_ms:.2f} | {r.reference_ms:.2f} | {r.speedup:.2f}x | "
                    f"{r.ours_peak_mb:.0f} / {r.reference_peak_mb:.0f} |")
    return rows


def _train_step(model, image, autocast: bool):
    def step():
        with torch.autocast(image.device.type, dtype=torch.bfloat16, enabled=autocast):
            logits = model(image)
        logits.float().square().mean().backward()
        model.zero_grad(set_to_none=True)

    return step


def other_sides(size: int, rounds: int, device: torch.device) -> list[bench.Comparison]:
    """Our default U-Net's step against the reference under torch.compile, and on a GPU
    against ours with the Triton convolutions, in fp32 and bf16 autocast. (A dry run on the
    CPU takes fp32 and no Triton: there the post's bf16 step takes minutes on most CPUs, and
    the interpreted Triton step minutes at the smallest size.)"""
    torch.manual_seed(0)
    ours = unet_fast.UNet().to(device)
    compiled = reference.UNet().to(device)
    compiled.load_state_dict(ours.state_dict())
    sides = {"the post's model under torch.compile": torch.compile(compiled)}
    if device.type == "cuda":
        sides["ours with the Triton convolutions"] = unet_fast.UNet(backend="triton").to(device)
        sides["ours with the Triton convolutions"].load_state_dict(ours.state_dict())
    image = torch.randn(1, 1, size, size, device=device)
    results = []
    for autocast in (False, True) if device.type == "cuda" else (False,):
        label = "bf16 autocast" if autocast else "fp32"
        for name, other in sides.items():
            results.append(bench.compare(f"UNet step {size}, {label}, vs {name}", _train_step(ours, image, autocast),
                                         _train_step(other, image, autocast), rounds, device))
    return results


def triton_tiles() -> list[dict]:
    try:
        from unet_fast.kernels.conv3x3 import autotuned_tiles
    except ImportError:  # no Triton
        return []
    return autotuned_tiles()


def tile_rows(tiles: list[dict]) -> list[str]:
    if not tiles:
        return ["- none: the interpreter does not autotune (a dry run), or no Triton convolution ran"]
    rows = ["| kernel | tensor cores | key (M or K, C_in, C_out, dtypes) | BLOCK_M x N x K | warps | stages |",
            "|---|---|---|---|---|---|"]
    for t in sorted(tiles, key=lambda t: (t["kernel"], str(t["key"]))):
        key = ", ".join(str(part) for part in t["key"])
        rows.append(f"| {t['kernel']} | {'yes' if t['tensor_cores'] else 'no'} | {key} | "
                    f"{t['BLOCK_M']} x {t['BLOCK_N']} x {t['BLOCK_K']} | {t['num_warps']} | {t['num_stages']} |")
    return rows


def write_atomically(path: Path, text: str) -> None:
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as file:
        file.write(text)
    os.replace(file.name, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tools/gpu_report.py")
    parser.add_argument("--report", type=Path, required=True)
    parser.add_argument("--tests-log", type=Path, required=True)
    parser.add_argument("--build-log", type=Path)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=572)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    start = time.perf_counter()

    sections = ["# unet_fast on a GPU: tools/gpu_check.sh", "", "## Machine", *machine(device)]
    if args.build_log and args.build_log.exists():
        sections += ["", "## Build", *[f"- {line}" for line in args.build_log.read_text().splitlines() if line]]
    sections += ["", "## Tests on this device", *tests_summary(args.tests_log)]
    sections += ["", f"## Ours against the composite and the post's model ({args.size}x{args.size}, batch 1, "
                 f"medians of {args.rounds} alternating runs)", *comparison_rows(bench.run(args.size, args.rounds, args.device))]
    sections += ["", "## Against torch.compile, and the Triton convolutions",
                 *comparison_rows(other_sides(args.size, args.rounds, device))]
    sections += ["", "## Tiles the Triton convolutions autotuned to (the runs above)", *tile_rows(triton_tiles())]
    sections += ["", f"Report written in {time.perf_counter() - start:.0f} s."]
    write_atomically(args.report, "\n".join(sections) + "\n")
    print(f"wrote {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
