"""Convolutional encoders and decoders for the center's codecs, from MONAI blocks.

An encoder halves the resolution ``log2(downsample)`` times with residual units and ends in a 1×1
convolution and tanh, so codes are bounded in [-1, 1]: bounded codes quantise to int8 cleanly and give
the server's MSE a fixed scale. A decoder mirrors it with transposed convolutions.

``norm`` is a MONAI norm name (``codec.norm``). Batch norm, not the instance norm MONAI's U-Net uses,
is the center's default: an instance norm rescales every token by statistics of the whole slice, so
the air around a small head at the top of a scan gets other features than the air around a large one,
and codes of slices unlike the training ones decode foreground outside the body.

``activation`` (``codec.activation``) is every block's nonlinearity: MONAI's default PReLU, or a ReLU or
fixed-slope leaky ReLU, whose backward pass is a comparison where PReLU's also reduces over every
value for its slope (18 % of a mask-codec training step at 128² on the CPU). ReLU cost CT 0.27 of
3-D Dice and the leaky ReLU missed the adoption rule on CT (docs/results.md, "Cheaper center
activations"), so PReLU stays the default.

``padding`` (``codec.padding``) is the encoder's border rule. ``circular`` wraps every convolution
around the image's edges (:class:`WrappedConv2d`), so a cyclic shift of the image by whole tokens gives
exactly the cyclically shifted code: the server's ``shift`` augmentation then trains on codes of real
(shifted) images instead of approximations whose error at the borders was 8-30 % (docs/results.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import cast

import torch
from monai.networks.blocks import Convolution, ResidualUnit
from torch import nn
from torch.nn import functional

from privacysf.config.codec import CodecActivation, MaskUpsampling, Padding


def downsampling_stages(downsample: int) -> int:
    """How many stride-2 stages halve an image ``downsample`` times over: a token is one pixel of the
    last stage, so ``downsample`` must be a power of two."""
    stages = int(math.log2(downsample))
    if 2**stages != downsample or stages < 1:
        raise ValueError(f"downsample must be a power of two >= 2, got {downsample}")
    return stages


def wrap(x: torch.Tensor, rows: int, columns: int) -> torch.Tensor:
    """``x`` with its last ``rows``/``columns`` copied before its first and its first after its
    last, in one tensor of ``x``'s layout (half the time of two concatenations)."""
    n, c, h, w = x.shape
    channels_last = x.is_contiguous(memory_format=torch.channels_last)
    out = torch.empty(
        (n, c, h + 2 * rows, w + 2 * columns),
        dtype=x.dtype,
        device=x.device,
        memory_format=torch.channels_last if channels_last else torch.contiguous_format,
    )
    out[..., rows : rows + h, columns : columns + w] = x
    out[..., rows : rows + h, :columns] = x[..., w - columns :]
    out[..., rows : rows + h, columns + w :] = x[..., :columns]
    out[..., :rows, :] = out[..., h : h + rows, :]
    out[..., rows + h :, :] = out[..., rows : 2 * rows, :]
    return out


class WrappedConv2d(nn.Conv2d):
    """A convolution whose border wraps around the image, in the input's memory layout.

    torch's own ``padding_mode="circular"`` returns a contiguous tensor, so a channels-last network
    (every served center network, :mod:`privacysf.nets.inference`) converted layouts at each such
    convolution and ran its encoder 1.8× slower; the wrap is built here from slices of the input
    instead, which keep its layout."""

    def __init__(self, conv: nn.Conv2d) -> None:
        pair = tuple[int, int]  # what a 2-D convolution built with int sizes holds
        super().__init__(
            conv.in_channels,
            conv.out_channels,
            cast(pair, conv.kernel_size),
            cast(pair, conv.stride),
            cast(pair, conv.padding),
            cast(pair, conv.dilation),
            conv.groups,
            conv.bias is not None,
            padding_mode="circular",
        )
        self.load_state_dict(conv.state_dict())

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        rows, columns = cast(tuple[int, int], self.padding)
        return functional.conv2d(
            wrap(x, rows, columns), weight, bias, self.stride, 0, self.dilation, self.groups
        )


LEAKY_SLOPE = 0.25
"""Slope of ``leakyrelu`` below zero: where every PReLU starts, kept fixed."""


def monai_activation(activation: CodecActivation) -> str | tuple[str, dict]:
    """``codec.activation`` as MONAI's blocks take it."""
    return ("leakyrelu", {"negative_slope": LEAKY_SLOPE}) if activation == "leakyrelu" else activation


def swap_children(net: nn.Module, swap: Callable[[nn.Module], nn.Module | None]) -> None:
    """Put ``swap(child)`` in the place of every submodule of ``net`` for which it is not None (each
    module is offered once, as it stood before any swap)."""
    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            if (new := swap(child)) is not None:
                setattr(parent, name, new)


def wrap_borders(net: nn.Module) -> None:
    """Make every convolution of ``net`` that pads a :class:`WrappedConv2d`, weights kept: MONAI's
    blocks take no padding mode, so their convolutions are swapped once built."""
    swap_children(net, lambda m: WrappedConv2d(m) if type(m) is nn.Conv2d and any(m.padding) else None)


class ConvEncoder(nn.Module):
    def __init__(
        self,
        in_channels: int,
        code_channels: int,
        width: int,
        downsample: int,
        norm: str,
        padding: Padding = "zeros",
        activation: CodecActivation = "prelu",
    ) -> None:
        super().__init__()
        act = monai_activation(activation)
        layers: list[nn.Module] = []
        channels = in_channels
        for i in range(downsampling_stages(downsample)):
            out = width * 2**i
            layers.append(ResidualUnit(2, channels, out, strides=2, subunits=2, norm=norm, act=act))
            channels = out
        layers.append(ResidualUnit(2, channels, channels, strides=1, subunits=2, norm=norm, act=act))
        layers.append(nn.Conv2d(channels, code_channels, 1))
        self.net = nn.Sequential(*layers)
        if padding == "circular":
            wrap_borders(self.net)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(x))


class ConvDecoder(nn.Module):
    """Codes back to full-resolution outputs, the encoder's stages in reverse.

    ``top_width`` (default ``width``) is the width of the last stage, the only one at full resolution:
    with four times the pixels of the stage before, it holds most of the decoder's arithmetic, so a
    narrower one is the cheapest place to save (``codec.mask_decoder_width``). ``upsampling="subpixel"``
    drops that stage: the half-resolution stage's 1×1 output holds four values per output channel, one
    per pixel of its 2×2 block, put in place by a pixel shuffle (``codec.mask_upsampling``).
    """

    def __init__(
        self,
        code_channels: int,
        out_channels: int,
        width: int,
        downsample: int,
        norm: str,
        top_width: int | None = None,
        activation: CodecActivation = "prelu",
        upsampling: MaskUpsampling = "transposed",
    ) -> None:
        super().__init__()
        stages = downsampling_stages(downsample)
        channels = width * 2 ** (stages - 1)
        act = monai_activation(activation)
        layers: list[nn.Module] = [
            nn.Conv2d(code_channels, channels, 1),
            ResidualUnit(2, channels, channels, strides=1, subunits=2, norm=norm, act=act),
        ]
        subpixel = upsampling == "subpixel"
        for i in reversed(range(1 if subpixel else 0, stages)):
            out = width * 2 ** (i - 1) if i else top_width or width
            layers += [
                Convolution(2, channels, out, strides=2, is_transposed=True, norm=norm, act=act),
                ResidualUnit(2, out, out, strides=1, subunits=1, norm=norm, act=act),
            ]
            channels = out
        if subpixel:
            layers += [nn.Conv2d(channels, out_channels * 4, 1), nn.PixelShuffle(2)]
        else:
            layers.append(nn.Conv2d(channels, out_channels, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        return self.net(code)
