"""Sizes through a valid-convolution U-Net: which input sizes it can take, and what comes out.

Every block's two 3x3 convolutions take 4 pixels off a side's length; every pool halves it and
must meet an even length (else the skips stop lining up and tiles stop joining seamlessly);
every up-convolution doubles it. The valid input sizes are then an arithmetic progression with
step 2**(pools); for the default 5-level U-Net: 188, 204, ..., 572, ..., output = input - 184.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

_CONV_LOSS = 4  # two valid 3x3 convolutions per block


@dataclass(frozen=True)
class UNetGeometry:
    """``depth`` encoder blocks (``depth - 1`` pools used) and ``stages`` decoder stages."""

    depth: int
    stages: int

    def _trace(self, n: int) -> tuple[int | None, str]:
        """(output size, '') for a valid input size ``n``, else (None, why not)."""
        size = n
        for level in range(self.depth):
            size -= _CONV_LOSS
            if size < 1:
                return None, f"it shrinks to {size} in encoder block {level}"
            if level < self.depth - 1:
                if size % 2:
                    return None, f"pool {level} would meet an odd size ({size})"
                size //= 2
        for stage in range(self.stages):
            size = 2 * size - _CONV_LOSS
            if size < 1:
                return None, f"it shrinks to {size} in decoder stage {stage}"
        return size, ""

    def join_sizes(self, n: int) -> list[int | None]:
        """For a valid input length ``n``, by encoder level (0 at the top): the length of the
        up-convolved map the decoder joins with that level's output (the centre window it
        crops), or None where no decoder stage joins it (the deepest level, and the top ones
        of a decoder with fewer stages than pools)."""
        self.output_size(n)
        size = n
        for level in range(self.depth):
            size -= _CONV_LOSS
            if level < self.depth - 1:
                size //= 2
        joins: list[int | None] = [None] * self.depth
        for stage in range(self.stages):
            size *= 2
            joins[self.depth - 2 - stage] = size
            size -= _CONV_LOSS
        return joins

    @property
    def step(self) -> int:
        """How far apart valid input sizes are: 2**pools."""
        return 2 ** (self.depth - 1)

    @property
    def min_size(self) -> int:
        """The smallest valid input size; the others are ``min_size + k * step``."""
        return next(n for n in itertools.count(1) if self.is_valid(n))

    def is_valid(self, n: int) -> bool:
        return self._trace(n)[0] is not None

    def output_size(self, n: int, name: str = "input size") -> int:
        """Output length for input length ``n``; ValueError naming the nearest valid sizes."""
        out, why = self._trace(n)
        if out is None:
            raise ValueError(f"{name} {n} does not fit this U-Net: {why}. {self._nearest_phrase(n)}")
        return out

    def valid_input_sizes(self, lo: int = 1, hi: int = 1024) -> list[int]:
        """All valid input lengths in [lo, hi]."""
        return [n for n in range(max(lo, 1), hi + 1) if self.is_valid(n)]

    def nearest_valid_sizes(self, n: int) -> tuple[int | None, int]:
        """The largest valid size below ``n`` (None if there is none) and the smallest above."""
        below = next((m for m in range(n - 1, 0, -1) if self.is_valid(m)), None)
        above = next(m for m in itertools.count(n + 1) if self.is_valid(m))
        return below, above

    def _nearest_phrase(self, n: int) -> str:
        below, above = self.nearest_valid_sizes(n)
        if below is None:
            return f"The smallest valid size is {above}."
        return f"Nearest valid sizes: {below} and {above}."
