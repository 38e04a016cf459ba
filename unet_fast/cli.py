"""The ``unet-fast`` command."""

from __future__ import annotations

import argparse
import time

import torch

import unet_fast
from unet_fast import reference


def _demo(args: argparse.Namespace) -> None:
    """Runs the drop-in U-Net and the reference on one random image, times both and compares."""
    torch.manual_seed(0)
    model = unet_fast.UNet(backend=args.backend)
    oracle = reference.UNet()
    oracle.load_state_dict(model.state_dict())
    image = torch.randn(1, 1, args.size, args.size)
    print(f"unet_fast {unet_fast.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"input {tuple(image.shape)}; expected output side {model.output_size(args.size)}")
    outputs = {}
    for name, net in (("unet_fast.UNet", model), ("reference.UNet", oracle)):
        net(image).square().mean().backward()  # warm-up: first-touch page faults, kernel choice
        with torch.no_grad():
            start = time.perf_counter()
            outputs[name] = net(image)
            forward = time.perf_counter() - start
        start = time.perf_counter()
        net(image).square().mean().backward()
        step = time.perf_counter() - start
        print(f"{name:15s} output {tuple(outputs[name].shape)}  forward {forward:.2f} s  "
              f"forward+backward {step:.2f} s")
    difference = (outputs["unet_fast.UNet"] - outputs["reference.UNet"]).abs().max().item()
    print(f"largest difference between the two outputs: {difference:.2e}")


def _bench(args: argparse.Namespace) -> None:
    """Prints (and optionally saves) this machine's speed-ups over the reference."""
    from unet_fast import bench

    unet_fast.UNetGeometry(depth=5, stages=4).output_size(args.size, name="--size")
    results = bench.run(size=args.size, rounds=args.rounds)
    print(f"unet_fast {unet_fast.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(bench.format_table(results))
    if args.json:
        bench.write_json(results, args.json)
        print(f"wrote {args.json}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="unet-fast", description=unet_fast.__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run the U-Net on a random image and time it")
    demo.add_argument("--size", type=int, default=572, help="input side length (default 572)")
    demo.add_argument("--backend", default=None, help="force a backend: cpu, cuda, triton or torch")
    demo.set_defaults(run=_demo)
    bench_parser = commands.add_parser("bench", help="speed-ups over the reference on this machine")
    bench_parser.add_argument("--size", type=int, default=252, help="U-Net input side length (default 252)")
    bench_parser.add_argument("--rounds", type=int, default=5, help="alternating timed runs per side (default 5)")
    bench_parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    bench_parser.set_defaults(run=_bench)
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
