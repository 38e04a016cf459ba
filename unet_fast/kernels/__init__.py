"""Triton kernels, one module per op. Importing this package fixes whether they run compiled
(GPU) or under the Triton interpreter (``TRITON_INTERPRET=1`` at import, for CPU tensors)."""

import os

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"

# Elements per program of the element-wise kernels on a GPU; the interpreter pays per
# program, so there one program covers up to 2**16 elements.
GPU_BLOCK = 1024
_INTERPRETER_MAX_BLOCK = 1 << 16


def elementwise_block(numel: int) -> int:
    """BLOCK for an element-wise kernel over `numel` elements."""
    if INTERPRETED:
        return min(_INTERPRETER_MAX_BLOCK, 1 << (max(numel, 16) - 1).bit_length())
    return GPU_BLOCK
