"""The element-wise kernels' walk over an (N, C, H, W) tensor in its memory order, so that
neighbouring lanes touch neighbouring addresses: channels fastest for a channels_last tensor,
else columns. Index math in int32 where every index fits, int64 only where it must."""

import torch
import triton
import triton.language as tl


def channels_fastest(t: torch.Tensor) -> bool:
    """Whether `t` (N, C, H, W) is laid out with channels fastest (channels_last, or a window
    of such a tensor)."""
    return t.shape[1] > 1 and t.stride(1) < t.stride(3)


def needs_int64(*tensors: torch.Tensor) -> bool:
    """Whether an element count or an offset into any of `tensors` may pass int32."""
    return any(t.numel() >= 2**31 or sum((size - 1) * stride for size, stride in zip(t.shape, t.stride())) >= 2**31
               for t in tensors)


def aot_walks():
    """(constexprs, integer type) of the walks a GPU launch takes, for ahead-of-time
    compilation: NCHW and channels_last in int32, channels_last in int64 (the U-Net's layout
    past 2**31 elements; Triton passes integers that fit as i32)."""
    for channels_fastest_, int64 in ((False, False), (True, False), (True, True)):
        yield {"CHANNELS_FASTEST": channels_fastest_, "INT64": int64}, "i64" if int64 else "i32"


@triton.jit
def flat_indices(BLOCK: tl.constexpr, INT64: tl.constexpr):
    """This program's block of flat indices."""
    pid = tl.program_id(0)
    if INT64:
        pid = pid.to(tl.int64)
    return pid * BLOCK + tl.arange(0, BLOCK)


@triton.jit
def nchw_of(i, C, H, W, CHANNELS_FASTEST: tl.constexpr):
    """(n, c, y, x) of the flat indices `i` of a walk in memory order."""
    if CHANNELS_FASTEST:
        c = i % C
        rest = i // C
        x = rest % W
        rest = rest // W
        y = rest % H
        n = rest // H
    else:
        x = i % W
        rest = i // W
        y = rest % H
        rest = rest // H
        c = rest % C
        n = rest // C
    return n, c, y, x
