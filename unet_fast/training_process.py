"""One U-Net training process, measured as the OS sees it: ``python -m unet_fast.training_process
--model unet_fast --size 572 --steps 3`` builds the model and an SGD optimiser, runs the steps
and prints, as JSON, its resident memory after setting up and at its peak (VmHWM), each step's
seconds, and what unet_fast's buffer pool then holds. A fresh process, so that nothing an
earlier measurement left behind counts; :func:`unet_fast.bench.training_process` runs it.

``--model reference`` runs the blog post's model with the paper's weighted loss written in
stock PyTorch, as a user of the post would.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time

import torch
import torch.nn.functional as F


def status_mb(field: str) -> float:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in MiB."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":")) / 1024


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m unet_fast.training_process")
    parser.add_argument("--model", choices=["unet_fast", "reference"], required=True)
    parser.add_argument("--size", type=int, default=572)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    if args.model == "unet_fast":
        import unet_fast

        model, loss_fn = unet_fast.UNet(), unet_fast.weighted_softmax_cross_entropy
    else:
        from unet_fast import reference

        model = reference.UNet()

        def loss_fn(logits, target, weight):
            return (F.cross_entropy(logits, target, reduction="none") * weight).mean()

    optimizer = torch.optim.SGD(model.parameters(), lr=1e-6, momentum=0.99)
    out = args.size - 184
    image = torch.randn(1, 1, args.size, args.size)
    target = torch.randint(0, 2, (1, out, out))
    weight = torch.rand(1, out, out) * 10
    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if args.precision == "bf16"
                else contextlib.nullcontext())
    setup_mb = status_mb("VmRSS")
    seconds = []
    for _ in range(args.steps):
        start = time.perf_counter()
        with autocast:
            logits = model(image)
        loss_fn(logits.float(), target, weight).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        del logits
        seconds.append(time.perf_counter() - start)
    pool_mb = 0.0
    if args.model == "unet_fast":
        from unet_fast import memory

        pool_mb = memory.cpu_pool_stats().cached_bytes / 2**20
    print(json.dumps({"setup_mb": setup_mb, "peak_mb": status_mb("VmHWM"), "step_seconds": seconds,
                      "pool_cached_mb": pool_mb}))


if __name__ == "__main__":
    main()
