"""The element-wise Triton kernels walk a tensor in its memory order (unet_fast.kernels.walk):
lane i of the walk is the element at memory position i, for NCHW and channels_last, in int32
and int64 index math."""

import pytest
import torch

triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402

from unet_fast.kernels.walk import channels_fastest, flat_indices, nchw_of, needs_int64  # noqa: E402


@triton.jit
def _coordinates_kernel(out_ptr, numel, C, H, W, BLOCK: tl.constexpr, CHANNELS_FASTEST: tl.constexpr,
                        INT64: tl.constexpr):
    i = flat_indices(BLOCK, INT64)
    mask = i < numel
    n, c, y, x = nchw_of(i, C, H, W, CHANNELS_FASTEST)
    tl.store(out_ptr + 4 * i, n, mask=mask)
    tl.store(out_ptr + 4 * i + 1, c, mask=mask)
    tl.store(out_ptr + 4 * i + 2, y, mask=mask)
    tl.store(out_ptr + 4 * i + 3, x, mask=mask)


@pytest.mark.parametrize("int64", [False, True])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_lane_i_is_the_element_at_memory_position_i(layout, int64):
    shape = (2, 5, 3, 4)
    t = torch.empty(shape).contiguous(memory_format=layout)
    numel = t.numel()
    walked = torch.full((numel, 4), -1, dtype=torch.int64 if int64 else torch.int32)
    _coordinates_kernel[(triton.cdiv(numel, 64),)](walked, numel, *shape[1:], BLOCK=64,
                                                   CHANNELS_FASTEST=channels_fastest(t), INT64=int64)
    strides = torch.tensor(t.stride())
    assert torch.equal((walked.long() * strides).sum(1), torch.arange(numel))


def test_channels_fastest_is_read_off_the_strides():
    x = torch.empty(1, 8, 6, 6)
    assert not channels_fastest(x)
    assert channels_fastest(x.contiguous(memory_format=torch.channels_last))
    assert channels_fastest(x.contiguous(memory_format=torch.channels_last)[:, :, 1:5, 1:5])
    assert not channels_fastest(torch.empty(1, 1, 6, 6).contiguous(memory_format=torch.channels_last))


def test_int64_only_where_an_index_may_pass_int32():
    small = torch.empty(1, 64, 572, 572)
    assert not needs_int64(small)
    # without the memory: meta tensors of 2**31 elements, and of four whose offsets pass int32
    assert needs_int64(torch.empty(2, 1024, 1024, 1024, device="meta"))
    assert needs_int64(torch.empty(1, device="meta").as_strided((1, 1, 2, 2), (0, 0, 2**30, 2**30)))
