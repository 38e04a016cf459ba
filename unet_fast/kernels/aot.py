"""Ahead-of-time compilation of every Triton kernel configuration for NVIDIA GPUs, with no GPU:
registers, shared memory and spills per kernel and architecture, from the cubin.

    python -m unet_fast.kernels.aot      (exits 1 on a compile failure or a spill)

Runs compiled kernels only: TRITON_INTERPRET must not be set.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
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

    @property
    def ok(self) -> bool:
        return self.spill_bytes == 0


def _resource_usage(cubin: bytes) -> dict[str, int]:
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as file:
        file.write(cubin)
        file.flush()
        report = subprocess.run([tool, "--dump-resource-usage", file.name], capture_output=True, text=True, check=True).stdout
    return {key: int(value) for key, value in re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", report)}


def _aligned_pointers(kernel, signature) -> dict:
    """Marks every pointer 16-byte aligned, as the launcher's specialisation does for torch's
    allocations (the JIT also turns integer arguments equal to 1 into constants: the kernel
    modules declare those, e.g. unit strides, in their constexprs)."""
    return {(i,): [["tt.divisibility", 16]] for i, name in enumerate(kernel.arg_names) if signature[name].startswith("*")}


def compile_all(architectures=ARCHITECTURES) -> list[CompiledKernel]:
    """Compiles every configuration of every kernel module for each architecture."""
    if INTERPRETED:
        raise RuntimeError("unset TRITON_INTERPRET: the interpreter's kernels cannot be compiled")
    results = []
    for module in MODULES:
        for kernel, signature, constexprs in module.aot_configurations():
            config = ", ".join(f"{k}={getattr(v, 'name', v)}" for k, v in constexprs.items())
            config += ", " + ",".join(sorted({v for v in signature.values() if v.startswith("*")}))
            for arch in architectures:
                compiled = triton.compile(
                    ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=_aligned_pointers(kernel, signature)),
                    target=GPUTarget("cuda", arch, 32),
                    options={"num_warps": getattr(module, "AOT_NUM_WARPS", 4)},
                )
                usage = _resource_usage(compiled.asm["cubin"])
                results.append(CompiledKernel(kernel.__name__, config, arch, usage.get("REG", 0),
                                              compiled.metadata.shared, usage.get("LOCAL", 0) + usage.get("STACK", 0)))
    return results


def main() -> int:
    results = compile_all()
    print(f"{'kernel':32s} {'arch':>5s} {'regs':>5s} {'smem':>7s} {'spill':>6s}  configuration")
    for r in results:
        print(f"{r.kernel:32s} sm_{r.arch:<3d}{r.registers:5d} {r.shared_bytes:7d} {r.spill_bytes:6d}  {r.config}")
    failed = [r for r in results if not r.ok]
    print(f"{len(results)} compiled, {len(failed)} spilling")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
