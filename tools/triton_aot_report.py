#!/usr/bin/env python3
"""Compiles every Triton kernel configuration of unet_fast for sm_80 and sm_90 (no GPU needed)
and prints registers, shared memory and spills; exits 1 on a spill. The tests run the same
check (tests/test_kernels_aot.py)."""

import os
import sys

if os.environ.get("TRITON_INTERPRET") == "1":
    sys.exit("unset TRITON_INTERPRET: the interpreter's kernels cannot be compiled")

from unet_fast.kernels.aot import main  # noqa: E402

sys.exit(main())
