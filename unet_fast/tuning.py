"""Which algorithm each pass of each 3x3 convolution runs by on this CPU: measured here, not
guessed from another machine.

A CPU convolution can run by oneDNN's direct kernels (channels_last or NCHW), Winograd
F(2x2)/F(4x4)/F(6x6) (its products by our kernel or by ATen's GEMM, where ours runs), NNPACK,
a GEMM of unfolded patches (narrow weight gradients), and in bf16 natively or in fp32 rounded
once (csrc/cpu/conv_algorithm.h). Which wins depends on the CPU: oneDNN's bf16 kernels are 2x
faster than fp32 with AMX and slower than fp32 without it; its channels_last weight gradient
is 3x slower than NCHW on AVX2. So for every shape a network meets (per pass: forward, data
gradient, weight gradient; and per dtype) the first calls each run one candidate as the real
computation and time it, round by round, until every candidate has run twice (one more than
twice as slow as the best, once; one within 1.25x of it, three times); the fastest is kept,
in memory and in an on-disk cache keyed by the CPU's model and flags, the thread count and
the torch and unet_fast versions. A pass's first run in a process is not counted: it pays for
fresh pages and cold caches that later runs do not (the 572 U-Net's first forward of 64 -> 64
at 568 by F(6x6) took 203 ms, later ones 72-89), so counted, it could rule out the best.
Exploring costs only the difference to the best, on the first few calls of a shape; the
results of every candidate agree within the stated tolerances (tests/test_tuning.py).
:func:`tune` (``unet-fast tune``) settles every shape of a network ahead of time. The
hand-written rule of :func:`cold_start` is used where nothing is measured yet and tuning is
off or impossible (``UNET_FAST_TUNE=0``, under torch.compile).

Environment: ``UNET_FAST_TUNE=0`` turns measuring off (the rule, no cache);
``UNET_FAST_CACHE_DIR`` moves the cache (default: ``$XDG_CACHE_HOME/unet_fast`` or
``~/.cache/unet_fast``); ``UNET_FAST_WINOGRAD=0/2/4/6`` forces direct or one Winograd block
for every fp32/fp64 pass (and ``2`` every bf16 one), to measure by hand.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import platform
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

import torch

from unet_fast import settings

__all__ = ["ConvShape", "Choice", "choices", "cold_start", "candidates", "tune", "format_choices", "cache_path",
           "onednn_native"]

PASSES = ("forward", "data_grad", "weight_grad")
SLOW = 2.0  # a candidate this many times slower than the best so far is not run again
CLOSE = 1.25  # one this close to the best is run three times (else twice): the fastest run counts
CACHE_FORMAT = 1

T = TypeVar("T")


@dataclass(frozen=True)
class ConvShape:
    """One pass of a valid 3x3 convolution of `images` images from c_in to c_out channels with
    an out_h x out_w output, in `dtype` (torch's name: float32, bfloat16, ...)."""

    kind: str  # one of PASSES
    dtype: str
    images: int
    c_in: int
    c_out: int
    out_h: int
    out_w: int

    @classmethod
    def of(cls, kind: str, x: torch.Tensor, weight: torch.Tensor) -> "ConvShape":
        """The pass `kind` of the convolution of x (N, C_in, H, W) with weight (C_out, C_in, 3, 3)."""
        n, c_in, h, w = x.shape
        return cls(kind, str(x.dtype).removeprefix("torch."), int(n), int(c_in), int(weight.shape[0]),
                   int(h) - 2, int(w) - 2)

    def key(self) -> str:
        return f"{self.kind} {self.dtype} {self.images}x{self.c_in}->{self.c_out} {self.out_h}x{self.out_w}"


@dataclass(frozen=True)
class Choice:
    shape: ConvShape
    algorithm: str
    milliseconds: dict  # the fastest time of each candidate measured ({} where none were)
    source: str  # "measured", "cache", "rule" or "forced"


# ---- what can run, and the rule used before anything is measured -------------------------------

def _cpu_has_avx512() -> bool:
    from unet_fast import _C

    return _C.cpu_has_avx512()


@functools.cache
def onednn_native(dtype: str) -> bool:
    """Whether oneDNN runs this reduced-precision dtype itself here (else it emulates it slowly).
    Asked once, of torch's private mkldnn ops; a torch without them counts as emulating, so
    the bf16 passes are computed in fp32, which works everywhere."""
    name = {"bfloat16": "_is_mkldnn_bf16_supported", "float16": "_is_mkldnn_fp16_supported"}[dtype]
    try:
        return bool(getattr(torch.ops.mkldnn, name)())
    except (AttributeError, RuntimeError):
        return False


@functools.cache
def _point_products_kernel() -> str | None:
    from unet_fast import _C

    return _C.cpu_point_products_kernel()


@functools.cache
def _point_products_max_weight_bytes() -> int:
    """Larger transformed weights are multiplied by ATen's GEMM (csrc/cpu/point_gemm.h)."""
    from unet_fast import _C

    return _C.cpu_point_products_max_weight_bytes()


def _own_products_run(shape: ConvShape, block: int) -> bool:
    """Whether Winograd F(block x block) multiplies by our products kernel (csrc/cpu/point_gemm.h)
    in this pass, so that its products by ATen's GEMM are another candidate: fp32 forwards and
    data gradients whose transformed weights fit in cache, on CPUs where the kernel runs. Which
    GEMM is faster depends on the CPU and the layer (docs/winograd.md)."""
    weight_bytes = (block + 2) ** 2 * shape.c_in * shape.c_out * 4
    return (shape.kind != "weight_grad" and shape.dtype == "float32" and _point_products_kernel() is not None
            and weight_bytes <= _point_products_max_weight_bytes())


def _few_pixels(shape: ConvShape) -> bool:
    """Fewer output pixels than output channels: the unfolded patches are smaller than the
    weights, so that one GEMM of them reads the weights once (the deep layers of small inputs)."""
    return shape.images * shape.out_h * shape.out_w <= shape.c_out


def _fp32_candidates(shape: ConvShape) -> list[str]:
    found = ["direct", "nchw", "winograd2", "winograd4", "winograd6"]
    found += [f"winograd{block}-aten" for block in (2, 4, 6) if _own_products_run(shape, block)]
    if shape.kind == "forward" and shape.dtype == "float32" and torch.backends.nnpack.is_available():
        found.append("nnpack")
    if (shape.kind == "weight_grad" and shape.c_in <= 16) or (shape.kind == "forward" and _few_pixels(shape)):
        found.append("unfold")
    if shape.kind != "data_grad" and shape.c_in <= 4:
        found.append("few")
    return found


def candidates(shape: ConvShape) -> list[str]:
    """Every algorithm that can run this pass here, the rule's choice first."""
    if shape.dtype in ("float32", "float64"):
        found = _fp32_candidates(shape)
    elif shape.dtype in ("bfloat16", "float16"):
        as_fp32 = [f"float:{name}" for name in _fp32_candidates(_in_fp32(shape)) if name != "nnpack"]
        native = ["direct"] + (["winograd2"] if shape.dtype == "bfloat16" else [])
        found = (native if onednn_native(shape.dtype) else []) + as_fp32
    else:
        found = ["direct"]
    first = cold_start(shape)
    return [first] + [name for name in found if name != first]


def _in_fp32(shape: ConvShape) -> ConvShape:
    return ConvShape(shape.kind, "float32", shape.images, shape.c_in, shape.c_out, shape.out_h, shape.out_w)


def _blocks(block: int, images: int, height: int, width: int) -> int:
    return images * -(-height // block) * -(-width // block)


def cold_start(shape: ConvShape) -> str:
    """The rule measured on two CPUs (an AVX2 EPYC and an AVX-512/AMX Xeon; docs/winograd.md),
    the guess before this machine's own measurements: Winograd F(4x4) from 64 channels (32
    with AVX-512; 16 for weight gradients) and 64 blocks of 4x4 (36 for weight gradients and
    512-channel layers), F(6x6) from 100 blocks of 6x6 whose transformed tiles outweigh the
    transformed weights (and 128 channels with AVX-512); narrow weight gradients by unfolding;
    NCHW weight gradients without AVX-512; bf16 in fp32 where oneDNN emulates it, F(2x2) on
    wide layers where it does not."""
    if shape.dtype in ("bfloat16", "float16"):
        if not onednn_native(shape.dtype):
            return "float:" + cold_start(_in_fp32(shape))
        return "winograd2" if shape.dtype == "bfloat16" and _bf16_winograd_pays(shape) else "direct"
    if shape.dtype not in ("float32", "float64"):
        return "direct"
    avx512 = _cpu_has_avx512()
    if shape.kind == "weight_grad" and shape.c_in <= 4:
        return "unfold"
    block = _winograd_block(shape, avx512)
    if block:
        return f"winograd{block}"
    return "nchw" if shape.kind == "weight_grad" and not avx512 else "direct"


def _winograd_block(shape: ConvShape, avx512: bool) -> int:
    c_in, c_out, height, width = shape.c_in, shape.c_out, shape.out_h, shape.out_w
    if shape.kind == "data_grad":  # a full convolution from c_out to c_in channels onto the input
        c_in, c_out, height, width = c_out, c_in, height + 2, width + 2
    weight_grad = shape.kind == "weight_grad"
    narrowest = min(c_in, c_out)
    wide = c_in >= 512 and c_out >= 512
    if narrowest < (16 if weight_grad else 32 if avx512 else 64):
        return 0
    if _blocks(4, shape.images, height, width) < (36 if weight_grad or wide else 64):
        return 0
    large = _blocks(6, shape.images, height, width)
    large_pays = large >= 100 and (not avx512 or narrowest >= 128) and large * (c_in + c_out) >= c_in * c_out
    return 6 if large_pays else 4


def _bf16_winograd_pays(shape: ConvShape) -> bool:
    narrowest, widest = min(shape.c_in, shape.c_out), max(shape.c_in, shape.c_out)
    if shape.kind == "forward":
        tiles = _blocks(2, shape.images, shape.out_h, shape.out_w)
        return narrowest >= 256 and tiles * (shape.c_in + shape.c_out) >= shape.c_in * shape.c_out
    if shape.kind == "data_grad":
        return narrowest >= 512 and widest >= 1024 and _blocks(4, shape.images, shape.out_h + 2, shape.out_w + 2) >= 64
    return False


def _forced(shape: ConvShape) -> str | None:
    """The algorithm UNET_FAST_WINOGRAD forces for this pass, or None (unset or 1: measured)."""
    setting = settings.current().winograd
    if setting in ("", "1"):
        return None
    if setting not in ("0", "2", "4", "6"):
        raise ValueError(f"UNET_FAST_WINOGRAD must be 0, 1, 2, 4 or 6 (off, measured, or that output block for "
                         f"every fp32/fp64 pass, and 2 for bf16 ones too), got {setting!r}")
    if shape.dtype in ("float32", "float64"):
        return "direct" if setting == "0" else f"winograd{setting}"
    if shape.dtype == "bfloat16" and onednn_native("bfloat16"):
        return "winograd2" if setting == "2" else "direct"
    return cold_start(shape)


# ---- the table of this process, and the cache on disk ---------------------------------------

def measuring() -> bool:
    return settings.current().tune


@functools.cache
def _cpu() -> tuple[str, str]:
    """The CPU's model name, and a digest of its feature flags (from /proc/cpuinfo on Linux)."""
    fields = {}
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as info:
            for line in info:
                name, _, value = line.partition(":")
                fields.setdefault(name.strip(), value.strip())
    model = fields.get("model name") or platform.processor() or platform.machine()
    return model, hashlib.sha256(fields.get("flags", "").encode()).hexdigest()[:16]


def machine() -> dict:
    """What the measurements depend on: the cache is one file per distinct value of this."""
    from unet_fast import __version__

    model, flags = _cpu()
    # UNET_FAST_POINT_GEMM changes what the Winograd passes cost
    return {"cpu": model, "cpu_flags": flags, "threads": torch.get_num_threads(), "torch": torch.__version__,
            "unet_fast": __version__, "kernels": kernels_build(), "point_products": _point_products_kernel()}


@functools.cache
def kernels_build() -> str:
    """A digest of the compiled extension: kernels rebuilt under the same version number (a
    source checkout, a patched build) are measured afresh, not judged by their predecessors'
    times (a demo ran 1.6x slower on choices measured for an older build)."""
    from unet_fast import _C

    with open(_C.__file__, "rb") as library:
        return hashlib.sha256(library.read()).hexdigest()[:16]


def cache_path(about: dict | None = None) -> Path:
    about = about or machine()
    digest = hashlib.sha256(json.dumps(about, sort_keys=True).encode()).hexdigest()[:16]
    return settings.current().cache_dir / f"conv-algorithms-{digest}.json"


class _Table:
    """The choices of one machine fingerprint: settled ones, and the trials of unsettled ones."""

    def __init__(self, about: dict):
        self.about = about
        self.path = cache_path(about)
        self.settled: dict[str, Choice] = {}
        self.trials: dict[str, dict[str, list[float]]] = {}
        self.warmed: set[str] = set()  # passes run once already in this process
        for choice in _read_cache(self.path, about):
            self.settled[choice.shape.key()] = choice


def _read_cache(path: Path, about: dict) -> list[Choice]:
    """The choices in the cache file, or none (with a warning) if it is unreadable or not ours."""
    if not path.exists():
        return []
    try:
        payload = json.loads(path.read_text())
        if payload.get("format") != CACHE_FORMAT or payload.get("machine") != about:
            raise ValueError("written for another machine, thread count or version")
        return [Choice(ConvShape(**entry["shape"]), str(entry["algorithm"]), dict(entry["milliseconds"]), "cache")
                for entry in payload["choices"]]
    except (OSError, ValueError, KeyError, TypeError) as error:
        warnings.warn(f"ignoring the convolution tuning cache {path}: {error}; it will be measured again",
                      RuntimeWarning, stacklevel=3)
        return []


def _write_cache(table: _Table) -> None:
    """Merges this process's measured choices into the cache file, under a lock, atomically."""
    from unet_fast.files import atomic_path

    try:
        table.path.parent.mkdir(parents=True, exist_ok=True)
        with open(table.path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a broken file is replaced; it was reported when read
                merged = {choice.shape.key(): choice for choice in _read_cache(table.path, table.about)}
            merged.update({key: c for key, c in table.settled.items() if c.source == "measured"})
            entries = [{"shape": vars(c.shape), "algorithm": c.algorithm, "milliseconds": c.milliseconds}
                       for c in merged.values()]
            with atomic_path(table.path) as temporary:
                temporary.write_text(json.dumps({"format": CACHE_FORMAT, "machine": table.about, "choices": entries},
                                                indent=1))
    except OSError as error:
        warnings.warn(f"cannot write the convolution tuning cache {table.path}: {error}", RuntimeWarning,
                      stacklevel=3)


_lock = threading.RLock()
_tables: dict[tuple, _Table] = {}


def _lock_anew_in_child() -> None:
    """A child forked while another thread held the lock would wait for it forever; the forking
    thread holds it across fork(), so the child's tables are whole, and the child gets a new one."""
    global _lock
    _lock = threading.RLock()


os.register_at_fork(before=lambda: _lock.acquire(), after_in_parent=lambda: _lock.release(),
                    after_in_child=_lock_anew_in_child)


def _table() -> _Table:
    about = machine()
    key = tuple(sorted(about.items()))  # its values are strings and numbers; JSON cost 25 us a call
    with _lock:
        if key not in _tables:
            _tables[key] = _Table(about)
        return _tables[key]


def forget() -> None:
    """Drops this process's table (the cache file stays): the next calls read it again."""
    with _lock:
        _tables.clear()


# ---- choosing, and measuring while running ------------------------------------------------

def settled(shape: ConvShape) -> Choice:
    """The choice for this pass without measuring anything: forced, measured, or the rule."""
    forced = _forced(shape)
    if forced is not None:
        return Choice(shape, forced, {}, "forced")
    if measuring():
        with _lock:
            found = _table().settled.get(shape.key())
        if found is not None:
            return found
    return Choice(shape, cold_start(shape), {}, "rule")


def _next_trial(shape: ConvShape) -> str | None:
    """The candidate to time next for this pass, or None once it is settled."""
    table = _table()
    key = shape.key()
    if key in table.settled:
        return None
    trials = table.trials.setdefault(key, {})
    best = min((min(times) for times in trials.values()), default=float("inf"))
    # round by round: each candidate once, then again those not far behind the best, and a
    # third time the near-ties, where a burst of load elsewhere on the machine would decide
    waiting = [(len(trials.get(name, [])), order) for order, name in enumerate(candidates(shape))
               if len(trials.get(name, [])) < _runs_wanted(min(trials.get(name, [0.0])), best)]
    if waiting:
        return candidates(shape)[min(waiting)[1]]
    fastest = {name: 1e3 * min(times) for name, times in trials.items()}
    table.settled[key] = Choice(shape, min(fastest, key=fastest.get), fastest, "measured")
    del table.trials[key]
    _write_cache(table)
    return None


def _runs_wanted(fastest: float, best: float) -> int:
    """Timed runs for a candidate whose fastest so far took `fastest`, the best one `best`."""
    return 1 if fastest > SLOW * best else 3 if fastest <= CLOSE * best else 2


def _timed(shape: ConvShape, algorithm: str, call: Callable[[str], T]) -> tuple[T, float]:
    """``call(algorithm)`` for this pass, and the seconds it took (tests script this)."""
    start = time.perf_counter()
    result = call(algorithm)
    return result, time.perf_counter() - start


_explored = 0  # candidates run to be measured, in this process


def run(shape: ConvShape, call: Callable[[str], T], can_measure: bool = True) -> T:
    """``call(algorithm)`` by this pass's choice; while it is not settled (and measuring is on
    and `can_measure`), by the next candidate, timed."""
    global _explored
    _record(shape)
    if can_measure and measuring() and _forced(shape) is None:
        with _lock:
            algorithm = _next_trial(shape)
        if algorithm is not None:
            result, seconds = _timed(shape, algorithm, call)
            with _lock:
                table = _table()
                if shape.key() in table.warmed:
                    table.trials.setdefault(shape.key(), {}).setdefault(algorithm, []).append(seconds)
                else:  # not counted: the pass's first run pays for what later ones do not
                    table.warmed.add(shape.key())
                _explored += 1
            return result
    return call(settled(shape).algorithm)


def exploring(shape: ConvShape, can_measure: bool = True) -> bool:
    """Whether the next :func:`run` of this pass would time a candidate."""
    if not (can_measure and measuring()) or _forced(shape) is not None:
        return False
    with _lock:
        return shape.key() not in _table().settled


def run_backward(passes: list[tuple[ConvShape, Callable[[str], tuple]]], together: Callable[[dict], tuple],
                 can_measure: bool = True) -> tuple:
    """The gradients of a backward of several passes. While any of them is being measured,
    each pass alone, timed alone: ``alone(algorithm)`` returns the backward's tuple with only
    its own gradients set (None elsewhere), and the tuples are merged. Otherwise in one call:
    ``together({shape: algorithm})``, the one pass measured if it is the only one."""
    if len(passes) > 1 and any(exploring(shape, can_measure) for shape, _ in passes):
        results = [run(shape, alone, can_measure) for shape, alone in passes]
        return tuple(next((r[i] for r in results if r[i] is not None), None) for i in range(len(results[0])))
    if len(passes) == 1:
        shape = passes[0][0]
        return run(shape, lambda algorithm: together({shape: algorithm}), can_measure)
    shapes = [shape for shape, _ in passes]
    return together(dict(zip(shapes, settled_algorithms(shapes))))


def settled_algorithms(shapes: list[ConvShape]) -> list[str]:
    """The settled algorithm of each pass (forced, measured, or the rule), measuring nothing."""
    for shape in shapes:
        _record(shape)
    return [settled(shape).algorithm for shape in shapes]


def choices() -> list[Choice]:
    """What this process has settled (measured here or read from the cache)."""
    with _lock:
        return list(_table().settled.values())


# ---- ahead of time ------------------------------------------------------------------------

def tune(model: torch.nn.Module, input_size: int | tuple[int, int], *, dtype: torch.dtype = torch.float32,
         batch_size: int = 1, training: bool = True, max_steps: int = 30) -> list[Choice]:
    """Settles the algorithm of every convolution pass `model` runs on a batch of `input_size`
    inputs (under autocast to `dtype` if it is bf16/fp16; with the backward if `training`), by
    running it until nothing is left to measure; returns those choices. Gradients are taken
    with torch.autograd.grad, so the parameters' .grad is left as it was."""
    if not measuring():
        raise RuntimeError("tuning is off (UNET_FAST_TUNE=0): unset it to measure")
    height, width = (input_size, input_size) if isinstance(input_size, int) else input_size
    if dtype not in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        raise ValueError(f"dtype must be float32, float64, bfloat16 or float16, got {dtype}")
    parameter = next(model.parameters())
    in_channels = _input_channels(model)
    image = torch.randn(batch_size, in_channels, height, width, device=parameter.device,
                        dtype=dtype if dtype == torch.float64 else parameter.dtype)
    autocast = (torch.autocast(parameter.device.type, dtype=dtype) if dtype in (torch.bfloat16, torch.float16)
                else contextlib.nullcontext())
    seen: set[str] = set()
    for _ in range(max_steps):
        before = _explored
        with _recording(seen), autocast, torch.set_grad_enabled(training):
            out = model(image)
        if training:
            params = [p for p in model.parameters() if p.requires_grad]
            with _recording(seen):
                torch.autograd.grad(out.float().square().mean(), params)
        if _explored == before:
            break
    with _lock:
        table = _table()
        return [table.settled[key] for key in sorted(seen) if key in table.settled]


def _input_channels(model: torch.nn.Module) -> int:
    first = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    return first.in_channels


_recorders: list[set] = []


def _record(shape: ConvShape) -> None:
    for seen in _recorders:
        seen.add(shape.key())


@contextlib.contextmanager
def _recording(seen: set):
    """Collects the keys of the passes run meanwhile into `seen`."""
    _recorders.append(seen)
    try:
        yield
    finally:
        _recorders.remove(seen)


def format_choices(found: list[Choice]) -> str:
    """A table of choices: shape, algorithm, and each candidate's time where measured."""
    lines = [f"{'pass':11s} {'dtype':8s} {'N x C_in -> C_out':18s} {'output':9s} {'algorithm':16s} measured ms"]
    order = {kind: i for i, kind in enumerate(PASSES)}
    for c in sorted(found, key=lambda c: (c.shape.dtype, -c.shape.out_h, c.shape.c_in, order[c.shape.kind])):
        s = c.shape
        timings = ", ".join(f"{name} {ms:.1f}" for name, ms in sorted(c.milliseconds.items(), key=lambda kv: kv[1]))
        lines.append(f"{s.kind:11s} {s.dtype:8s} {f'{s.images}x{s.c_in}->{s.c_out}':18s} "
                     f"{f'{s.out_h}x{s.out_w}':9s} {c.algorithm:16s} {timings or c.source}")
    return "\n".join(lines)
