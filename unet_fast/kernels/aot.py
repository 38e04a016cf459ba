"""Ahead-of-time compilation of every Triton kernel configuration for NVIDIA GPUs, with no GPU:
registers, shared memory and spills per kernel and architecture, from the cubin, and the
matrix instructions in the PTX (mma.sync on sm_80, wgmma on sm_90).

    python -m unet_fast.kernels.aot      (exits 1 on a compile failure, a spill, or a tl.dot
                                          on tensor-core operands compiled without them)

Each kernel module's ``aot_configurations()`` yields (kernel, signature, constexprs) or
(kernel, signature, constexprs, compile options such as num_warps and num_stages).

Runs compiled kernels only: TRITON_INTERPRET must not be set.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from unet_fast.kernels import INTERPRETED, conv3x3, crop_concat, max_pool, weighted_cross_entropy

MODULES = (conv3x3, crop_concat, max_pool, weighted_cross_entropy)
ARCHITECTURES = (80, 90)


@dataclass
class CompiledKernel:
    kernel: str
    config: str
    arch: int
    registers: int
    shared_bytes: int
    spill_bytes: int  # local memory: spilled registers
    matrix: str  # matrix instructions found: "wgmma", "mma" or "-"
    expects_matrix: bool  # a tl.dot on bf16/fp16 operands, or on fp32 ones in TF32

    @property
    def ok(self) -> bool:
        return self.spill_bytes == 0 and (self.matrix != "-" or not self.expects_matrix)


def _resource_usage(cubin: bytes) -> dict[str, int]:
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as file:
        file.write(cubin)
        file.flush()
        report = subprocess.run([tool, "--dump-resource-usage", file.name], capture_output=True, text=True, check=True).stdout
    return {key: int(value) for key, value in re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", report)}


def _matrix_instructions(ptx: str) -> str:
    if "wgmma.mma_async" in ptx:
        return "wgmma"
    return "mma" if re.search(r"\bmma\.sync", ptx) else "-"


def _expects_matrix(kernel, signature: dict, constexprs: dict) -> bool:
    """Whether the kernel's dots should run on tensor cores: 16-bit operands, or fp32 ones
    in TF32 (a kernel's ``PRECISION`` constexpr)."""
    if "tl.dot(" not in kernel.src:
        return False
    sixteen_bit = any(kind in ("*bf16", "*fp16") for kind in signature.values())
    return sixteen_bit or constexprs.get("PRECISION", "tf32") == "tf32"


def _aligned_pointers(kernel, signature) -> dict:
    """Marks every pointer 16-byte aligned, as the launcher's specialisation does for torch's
    allocations (the JIT also turns integer arguments equal to 1 into constants: the kernel
    modules declare those, e.g. unit strides, in their constexprs)."""
    return {(i,): [["tt.divisibility", 16]] for i, name in enumerate(kernel.arg_names) if signature[name].startswith("*")}


def _configurations() -> list[tuple]:
    """Every (kernel, signature, constexprs, options) of every module, in a fixed order."""
    return [(kernel, signature, constexprs, options[0] if options else {"num_warps": 4})
            for module in MODULES for kernel, signature, constexprs, *options in module.aot_configurations()]


def _compile(task: tuple[int, int]) -> CompiledKernel:
    """Compiles configuration ``index`` of _configurations() for ``arch`` (in a worker
    process: configurations are rebuilt there rather than pickled)."""
    index, arch = task
    kernel, signature, constexprs, options = _configurations()[index]
    compiled = triton.compile(
        ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=_aligned_pointers(kernel, signature)),
        target=GPUTarget("cuda", arch, 32),
        options=options,
    )
    usage = _resource_usage(compiled.asm["cubin"])
    config = ", ".join(f"{k}={getattr(v, 'name', v)}" for k, v in constexprs.items())
    config += ", " + ",".join(sorted({v for v in signature.values() if v.startswith("*")}))
    config += "".join(f", {k}={v}" for k, v in options.items())
    return CompiledKernel(kernel.__name__, config, arch, usage.get("REG", 0), compiled.metadata.shared,
                          usage.get("LOCAL", 0) + usage.get("STACK", 0), _matrix_instructions(compiled.asm["ptx"]),
                          _expects_matrix(kernel, signature, constexprs))


def compile_all(architectures=ARCHITECTURES) -> list[CompiledKernel]:
    """Compiles every configuration of every kernel module for each architecture, on all cores."""
    if INTERPRETED:
        raise RuntimeError("unset TRITON_INTERPRET: the interpreter's kernels cannot be compiled")
    tasks = [(index, arch) for index in range(len(_configurations())) for arch in architectures]
    with ProcessPoolExecutor(os.cpu_count(), mp_context=multiprocessing.get_context("fork")) as pool:
        return list(pool.map(_compile, tasks))


def main() -> int:
    results = compile_all()
    print(f"{'kernel':32s} {'arch':>5s} {'regs':>5s} {'smem':>7s} {'spill':>6s} {'matrix':>6s}  configuration")
    for r in results:
        matrix = r.matrix + ("!" if r.expects_matrix and r.matrix == "-" else "")
        print(f"{r.kernel:32s} sm_{r.arch:<3d}{r.registers:5d} {r.shared_bytes:7d} {r.spill_bytes:6d} {matrix:>6s}  {r.config}")
    spilling = sum(r.spill_bytes > 0 for r in results)
    without_matrix = sum(r.expects_matrix and r.matrix == "-" for r in results)
    print(f"{len(results)} compiled, {spilling} spilling, {without_matrix} without the expected matrix instructions")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
