"""The drop-in U-Net: the reference's constructor, module tree and state_dict, run on the fused
ops of :mod:`unet_fast.ops`.

Parameters are created in the reference's order, so the same seed gives the same weights, and
``load_state_dict`` works both ways. The forward skips the reference's one wasted step (a pool
after the deepest block) and checks the input size up front.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from unet_fast import memory, ops, portable
from unet_fast.geometry import UNetGeometry

class Block(portable.Block):
    """Two valid 3x3 convolutions with a ReLU between them (and after both if ``final_relu``):
    the plain block's parameters, run by the fused ops."""

    def forward(self, x: torch.Tensor, backend: str | None = None) -> torch.Tensor:
        """Keeps only x and the output for backward (the first convolution is recomputed)."""
        return ops.conv3x3_block(
            x, self.conv1.weight, self.conv1.bias, self.conv2.weight, self.conv2.bias, self.final_relu, backend=backend
        )

    def forward_joined(self, up: torch.Tensor, skip: torch.Tensor, backend: str | None = None) -> torch.Tensor:
        """The block on the decoder's join of ``up`` with the centre crop of ``skip``, without
        keeping the joined tensor."""
        return ops.crop_concat_conv3x3_block(up, skip, self.conv1.weight, self.conv1.bias, self.conv2.weight,
                                             self.conv2.bias, self.final_relu, backend=backend)


class Encoder(nn.Module):
    def __init__(self, chs: Sequence[int], final_relu: bool):
        super().__init__()
        self.enc_blocks = nn.ModuleList(Block(chs[i], chs[i + 1], final_relu) for i in range(len(chs) - 1))
        self.pool = nn.MaxPool2d(2)  # the reference's module tree; forward pools with ops.max_pool2x2*

    def forward(self, x: torch.Tensor, backend: str | None = None,
                joins: Sequence[tuple[int, int] | None] | None = None) -> list[torch.Tensor]:
        """Each block's output, the deepest last; with ``joins`` (by level: the size of the
        window the decoder crops, or None where it joins none), the window instead where there
        is one: a view taken with the pool, so that its gradient is kept at the window's size."""
        features = []
        for level, block in enumerate(self.enc_blocks):
            x = block(x, backend)
            if level == len(self.enc_blocks) - 1:
                features.append(x)
            elif joins is not None and joins[level] is not None:
                x, window = ops.max_pool2x2_and_crop(x, joins[level], backend=backend)
                features.append(window)
            else:
                features.append(x)
                x = ops.max_pool2x2(x, backend=backend)
        return features


class Decoder(nn.Module):
    def __init__(self, chs: Sequence[int], final_relu: bool):
        super().__init__()
        self.chs = chs
        self.upconvs = nn.ModuleList(nn.ConvTranspose2d(chs[i], chs[i + 1], 2, 2) for i in range(len(chs) - 1))
        self.dec_blocks = nn.ModuleList(Block(chs[i], chs[i + 1], final_relu) for i in range(len(chs) - 1))

    def forward(self, x: torch.Tensor, skips: Sequence[torch.Tensor], backend: str | None) -> torch.Tensor:
        for upconv, block, skip in zip(self.upconvs, self.dec_blocks, skips):
            x = block.forward_joined(ops.up_conv2x2(x, upconv.weight, upconv.bias, backend=backend), skip, backend)
        return x


class UNet(nn.Module):
    """U-Net with valid convolutions; a drop-in for :class:`unet_fast.reference.UNet`.

    Keyword-only extras: ``backend`` forces the kernels of every fused op (``"cpu"``,
    ``"cuda"``, ``"triton"``, ``"torch"``; default: the best for the input's device), and
    ``paper_block=True`` puts a ReLU after both convolutions of every block, as in the paper
    (the reference, like the blog post, has one only between them).
    """

    def __init__(
        self,
        enc_chs: Sequence[int] = (1, 64, 128, 256, 512, 1024),
        dec_chs: Sequence[int] = (1024, 512, 256, 128, 64),
        num_class: int = 2,
        retain_dim: bool = False,
        out_sz: tuple[int, int] = (572, 572),
        *,
        backend: str | None = None,
        paper_block: bool = False,
    ):
        super().__init__()
        _check_widths(enc_chs, dec_chs)
        self.encoder = Encoder(enc_chs, paper_block)
        self.decoder = Decoder(dec_chs, paper_block)
        self.head = nn.Conv2d(dec_chs[-1], num_class, 1)
        self.retain_dim = retain_dim
        self.out_sz = out_sz
        self.dec_chs = dec_chs
        self.backend = backend
        self.paper_block = paper_block
        self.geometry = UNetGeometry(depth=len(enc_chs) - 1, stages=len(dec_chs) - 1)
        # The convolutions run channels_last; weights kept that way are not converted on every
        # call. Same shapes and values, so state_dicts load both ways.
        self.to(memory_format=torch.channels_last)

    def output_size(self, n: int) -> int:
        """Output side length for input side length ``n`` (before ``retain_dim``)."""
        return self.geometry.output_size(n)

    def valid_input_sizes(self, lo: int = 1, hi: int = 1024) -> list[int]:
        """Every input side length in [lo, hi] this network takes."""
        return self.geometry.valid_input_sizes(lo, hi)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The logits, in the layout the reference returns for x: channels_last only for a
        channels_last x (the layers run channels_last in any case)."""
        self._check_input(x)
        layout = torch.channels_last if _is_channels_last(x) else torch.contiguous_format
        joins = zip(self.geometry.join_sizes(x.shape[2]), self.geometry.join_sizes(x.shape[3]))
        features = self.encoder(x, self.backend, [None if h is None else (h, w) for h, w in joins])
        x = self.decoder(features[-1], features[-2::-1], self.backend)
        x = _head_in_fp32(self.head, x)
        if self.retain_dim:
            x = F.interpolate(x, self.out_sz)
        return x.contiguous(memory_format=layout)

    def _check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        in_channels = self.encoder.enc_blocks[0].conv1.in_channels
        if x.dim() != 4 or x.shape[1] != in_channels:
            raise ValueError(f"x must be (N, {in_channels}, H, W), got shape {tuple(x.shape)}")
        self.geometry.output_size(x.shape[2], name="input height")
        self.geometry.output_size(x.shape[3], name="input width")

    def extra_repr(self) -> str:
        return f"backend={self.backend!r}, paper_block={self.paper_block}"


def _head_in_fp32(head: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """The 1x1 head; under autocast computed in fp32 and returned in the autocast dtype, as the
    reference's is. Its few channels make it cheap in fp32 on any machine, while ATen's bf16
    path for it on a CPU whose oneDNN lacks bf16 is an unfolded convolution (at 572: 66 ms of a
    2.75 s bf16 step, against 20 ms in fp32)."""
    if not torch.is_autocast_enabled(x.device.type):
        return _head(head, x)
    with torch.autocast(x.device.type, enabled=False):
        return _head(head, x.float()).to(torch.get_autocast_dtype(x.device.type))


def _head(head: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """The head; on the CPU, where it is the plain 1x1 convolution UNet builds and no hook
    watches it, with its buffers from the pool of unet_fast's ops."""
    if x.device.type != "cpu" or not _plain_unhooked_1x1(head):
        return head(x)
    return _PooledConv1x1.apply(x, head.weight, head.bias)


def _plain_unhooked_1x1(head: nn.Module) -> bool:
    """Whether ``head`` is an nn.Conv2d as UNet builds it, with no hook that calling it as a
    module would run (a head replaced or watched by the user runs as the module)."""
    module_hooks = (head._forward_hooks, head._forward_pre_hooks, head._backward_hooks, head._backward_pre_hooks)
    global_hooks = (nn.modules.module._global_forward_hooks, nn.modules.module._global_forward_pre_hooks,
                    nn.modules.module._global_backward_hooks, nn.modules.module._global_backward_pre_hooks)
    return (type(head) is nn.Conv2d and head.kernel_size == (1, 1) and head.stride == (1, 1)
            and head.padding == (0, 0) and head.dilation == (1, 1) and head.groups == 1
            and head.padding_mode == "zeros" and not any(module_hooks) and not any(global_hooks))


class _PooledConv1x1(torch.autograd.Function):
    """``F.conv2d(x, weight, bias)`` with its forward's and backward's buffers from the CPU pool
    (:mod:`unet_fast.memory`). The head's data gradient is the largest tensor of a training step
    that ATen allocates outside unet_fast's ops (64 x 388 x 388 floats at 572): from glibc it
    was mapped anew each step, 9,400 page faults and 36 ms of system time on the AVX2 EPYC."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        with memory.pooled_cpu_allocations():
            out = F.conv2d(x, weight, bias)
        ctx.save_for_backward(x, weight)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        # ATen's convolution backward, which is differentiable: a gradient penalty's double
        # backward goes through it
        x, weight = ctx.saved_tensors
        needs = ctx.needs_input_grad
        with memory.pooled_cpu_allocations():
            grad_x, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
                grad_out, x, weight, [weight.shape[0]] if needs[2] else None, [1, 1], [0, 0], [1, 1], False,
                [0, 0], 1, [needs[0], needs[1], needs[2]],
            )
        return grad_x, grad_weight, grad_bias


def _is_channels_last(x: torch.Tensor) -> bool:
    """Whether x is laid out channels_last and not also contiguous (as one channel is)."""
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def _check_widths(enc_chs: Sequence[int], dec_chs: Sequence[int]) -> None:
    """The channel counts must chain: each decoder block takes the up-convolved channels plus
    the skip's."""
    if len(enc_chs) < 2 or len(dec_chs) < 1:
        raise ValueError(f"enc_chs needs at least 2 entries and dec_chs 1, got {enc_chs} and {dec_chs}")
    if dec_chs[0] != enc_chs[-1]:
        raise ValueError(f"dec_chs[0] ({dec_chs[0]}) must equal enc_chs[-1] ({enc_chs[-1]})")
    stages, depth = len(dec_chs) - 1, len(enc_chs) - 1
    if stages > depth - 1:
        raise ValueError(f"{stages} decoder stages need {stages + 1} encoder blocks, enc_chs gives {depth}")
    for i in range(stages):
        skip = enc_chs[depth - 1 - i]
        if dec_chs[i] != dec_chs[i + 1] + skip:
            raise ValueError(
                f"decoder stage {i} concatenates {dec_chs[i + 1]} up-convolved channels with a "
                f"{skip}-channel skip, so dec_chs[{i}] must be {dec_chs[i + 1] + skip}, got {dec_chs[i]}"
            )
