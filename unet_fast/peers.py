"""The same network in other CPU inference engines, timed beside ours: onnxruntime, OpenVINO
(fp32, and bf16 where the CPU computes in it) and ncnn (converted by pnnx from the ONNX file,
Winograd on). The blog post's U-Net with one set of weights is exported once (ONNX, static
1x1xSxS, through :mod:`unet_fast.portable`); each engine runs it with this process's thread
count, alternating with :class:`unet_fast.UNet` round by round, and its output is compared with
ours. Engines that are not installed are listed as such (the ``[peers]`` extra installs them).
"""

from __future__ import annotations

import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

import unet_fast
from unet_fast import exports, portable, reference, tuning

FP32_AGREEMENT = 1e-3  # relative difference of outputs (norm of the difference over ours)
BF16_AGREEMENT = 5e-2


@dataclass
class Peer:
    name: str
    run: Callable[[np.ndarray], np.ndarray] | None  # None: not available here
    agreement: float  # the largest relative difference from ours that counts as the same output
    missing: str = ""  # why it is not available


@dataclass
class PeerTiming:
    name: str
    ms: float | None
    ours_ms: float
    difference: float | None  # relative to our output
    agreement: float
    missing: str = ""

    @property
    def ours_faster(self) -> float | None:
        return None if self.ms is None else self.ms / self.ours_ms

    @property
    def agrees(self) -> bool:
        return self.difference is not None and self.difference <= self.agreement


def export_reference(size: int, folder: Path, seed: int = 0) -> tuple[dict, Path]:
    """The post's U-Net (seeded weights) and its ONNX file, static 1x1x``size``x``size``."""
    torch.manual_seed(seed)
    state = reference.UNet().state_dict()
    plain = portable.UNet().eval()
    plain.load_state_dict(state)
    path = folder / "unet.onnx"
    with exports._quiet_exporter():
        program = torch.onnx.export(plain, (torch.zeros(1, 1, size, size),), input_names=["raw"],
                                    output_names=["logits"], opset_version=exports.ONNX_OPSET, dynamo=True,
                                    verbose=False)
    program.save(str(path))
    return state, path


def engines(onnx_path: Path, size: int, threads: int) -> list[Peer]:
    """Every engine, available or not, ready to run ``onnx_path``."""
    return [_onnxruntime(onnx_path, threads), *_openvino(onnx_path, threads), _ncnn(onnx_path, size, threads)]


def _onnxruntime(path: Path, threads: int) -> Peer:
    try:
        import onnxruntime
    except ModuleNotFoundError:
        return Peer("onnxruntime", None, FP32_AGREEMENT, "not installed")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return Peer(f"onnxruntime {onnxruntime.__version__}", lambda x: session.run(None, {"raw": x})[0], FP32_AGREEMENT)


def _openvino(path: Path, threads: int) -> list[Peer]:
    try:
        import openvino
    except ModuleNotFoundError:
        return [Peer("OpenVINO", None, FP32_AGREEMENT, "not installed")]
    core = openvino.Core()
    version = openvino.get_version().split("-")[0]
    peers = []
    for precision, agreement in (("f32", FP32_AGREEMENT), ("bf16", BF16_AGREEMENT)):
        name = f"OpenVINO {version} {precision}"
        if precision == "bf16" and "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            peers.append(Peer(name, None, agreement, "this CPU has no bf16 arithmetic"))
            continue
        compiled = core.compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": precision,
                                                         "INFERENCE_NUM_THREADS": threads})
        peers.append(Peer(name, lambda x, compiled=compiled: compiled([x])[0], agreement))
    return peers


def _ncnn(path: Path, size: int, threads: int) -> Peer:
    try:
        import ncnn
        import pnnx
    except ModuleNotFoundError:
        return Peer("ncnn", None, FP32_AGREEMENT, "not installed (ncnn and pnnx)")
    converted = subprocess.run([pnnx.EXEC_PATH, path.name, f"inputshape=[1,1,{size},{size}]", "fp16=0"],
                               cwd=path.parent, capture_output=True, text=True)
    param, weights = path.with_suffix(".ncnn.param"), path.with_suffix(".ncnn.bin")
    if converted.returncode or not param.is_file():
        return Peer("ncnn", None, FP32_AGREEMENT, f"pnnx failed: {converted.stderr.strip()[-200:]}")
    net = ncnn.Net()
    net.opt.num_threads = threads
    net.opt.use_winograd_convolution = True
    net.load_param(str(param))
    net.load_model(str(weights))

    def run(x: np.ndarray) -> np.ndarray:
        with net.create_extractor() as extractor:
            extractor.input("in0", ncnn.Mat(np.ascontiguousarray(x[0])).clone())
            return np.asarray(extractor.extract("out0")[1])[None]

    return Peer(f"ncnn {ncnn.__version__}", run, FP32_AGREEMENT)


def compare(size: int = 572, rounds: int = 5, threads: int | None = None) -> list[PeerTiming]:
    """Each engine's forward of the post's U-Net against ours on one ``size`` image (fp32, batch
    1): medians of ``rounds`` rounds, each running ours and then every engine once, after one
    warm-up round; the first row is the post's model in PyTorch eager, the last ours under bf16
    autocast (against the engines' bf16)."""
    threads = threads or torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="unet_fast_peers_") as folder:
        state, onnx_path = export_reference(size, Path(folder))
        ours = unet_fast.UNet().eval()
        ours.load_state_dict(state)
        if tuning.measuring():  # settle our algorithms first, as the engines settle theirs when they load
            tuning.tune(ours, size, training=False)
        post = reference.UNet().eval()
        post.load_state_dict(state)
        image = torch.randn(1, 1, size, size, generator=torch.Generator().manual_seed(1))

        def in_torch(model, bf16=False):
            def run(x: np.ndarray) -> np.ndarray:
                with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    return model(torch.from_numpy(x)).float().numpy()
            return run

        if tuning.measuring():
            tuning.tune(ours, size, dtype=torch.bfloat16, training=False)
        peers = [Peer("the post's model, PyTorch eager", in_torch(post), FP32_AGREEMENT),
                 *engines(onnx_path, size, threads),
                 Peer("unet_fast.UNet, bf16 autocast", in_torch(ours, bf16=True), BF16_AGREEMENT)]
        runnable = [peer for peer in peers if peer.run is not None]
        ours_run, x = in_torch(ours), image.numpy()
        expected = ours_run(x)
        differences = {peer.name: float(np.linalg.norm(peer.run(x) - expected) / np.linalg.norm(expected))
                       for peer in runnable}  # (also the warm-up)
        times = {peer.name: [] for peer in runnable}
        ours_times = []
        for _ in range(rounds):
            ours_times.append(_milliseconds(ours_run, x))
            for peer in runnable:
                times[peer.name].append(_milliseconds(peer.run, x))
    ours_ms = statistics.median(ours_times)
    return [PeerTiming(peer.name, statistics.median(times[peer.name]) if peer.run else None, ours_ms,
                       differences.get(peer.name), peer.agreement, peer.missing) for peer in peers]


def _milliseconds(run: Callable[[np.ndarray], np.ndarray], x: np.ndarray) -> float:
    start = time.perf_counter()
    run(x)
    return (time.perf_counter() - start) * 1e3


def format_table(timings: list[PeerTiming], size: int) -> str:
    ours_ms = timings[0].ours_ms
    lines = [f"forward {size}x{size}, batch 1, fp32: unet_fast.UNet {ours_ms:.0f} ms (median), against",
             f"| {'engine':34s} | {'median':>9s} | {'ours faster':>11s} | {'output vs ours':>14s} |",
             f"|{'-' * 36}|{'-' * 11}|{'-' * 13}|{'-' * 16}|"]
    for timing in timings:
        if timing.ms is None:
            lines.append(f"| {timing.name:34s} | {'-':>9s} | {'-':>11s} | {timing.missing:>14s} |")
            continue
        verdict = f"{timing.difference:.1e}" + ("" if timing.agrees else " (!)")
        lines.append(f"| {timing.name:34s} | {timing.ms:6.0f} ms | {timing.ours_faster:10.2f}x | {verdict:>14s} |")
    return "\n".join(lines)
