"""Triton kernels, one module per op. Importing this package fixes whether they run compiled
(GPU) or under the Triton interpreter (``TRITON_INTERPRET=1`` at import, for CPU tensors)."""

import os

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
