"""An encoder whose codes flip exactly when its input does (``codec.symmetry=flips``).

The server augments code pairs because it never sees an image, and a flipped pair is only a real
example if the code of a flipped image is the flipped code. An ordinary convolutional encoder is far
from that (flip errors of 33-67 % on the built-in centers, docs/results.md), so the server's ``flip``
taught the mapper pairs no image produces and hurt. This encoder is flip-equivariant by construction,
not by a penalty:

- **Group convolutions over the four flips** (identity, left-right, up-down, both: the group Z2×Z2).
  Every hidden feature is a *field* of four channels, one per flip of one learned kernel, and a
  kernel's weights are shared by all four (:class:`FlipConv2d`). Flipping the input flips every map
  and permutes the four channels of each field, so nothing is lost: a left edge and a right edge are
  still told apart inside the network.
- **Downsampling that samples symmetrically.** A kernel-3, stride-2 convolution of an even-sized map
  reads pixels centred on 0, 2, 4, …, which a flip turns into 1, 3, 5, …: off by one pixel. Strided
  convolutions here have even kernels (4, padding 1, and 2 on the residual path), whose windows a flip
  maps onto other windows of the same grid.
- **Norms and activations per field**: a batch or instance norm computes one mean and variance per
  field over its four channels, and the PReLU has one slope, so neither tells the channels apart.
- **An invariant head.** The code's channels are a 1×1 convolution with one weight per field, shared
  by its four channels (a mean over the group). So a token's values do not change when the image is
  flipped, only the token's place does: the code of a flipped image is exactly the code grid flipped
  (and reversed in scan order for both flips), which is what ``augment.flip`` and ``augment.reverse``
  do to a pair. With ``codec.padding=circular`` whole-token shifts stay exact too.

The head pools what the hidden fields kept apart, so a token's code no longer says on which side of
the token an edge runs; its neighbours do, which is what the decoder reads. The cost of that in Dice
is measured in docs/results.md ("Flip-equivariant centers").
"""

from __future__ import annotations

from functools import partial
from typing import cast

import torch
from monai.networks.layers.utils import get_act_layer, get_norm_layer
from torch import nn
from torch.nn import functional

from privacysf.config.codec import FLIPS, CodecActivation, CodecNorm, Padding
from privacysf.nets.conv import downsampling_stages, monai_activation, wrap

GROUP = FLIPS
"""The flips of a 2-D map: element ``g``'s bit 0 flips the columns, bit 1 the rows."""


def flip_kernels(weight: torch.Tensor, element: int) -> torch.Tensor:
    """``weight`` (…, k, k) flipped as group element ``element`` flips a map."""
    dims = [d for bit, d in ((1, -1), (2, -2)) if element & bit]
    return weight.flip(dims) if dims else weight


class FlipConv2d(nn.Module):
    """A convolution between fields of the flip group, or from plain channels to fields (``lifting``).

    Output channel ``(f, g)`` convolves with kernel ``f`` flipped by ``g``; in a group layer its input
    field channels are also taken in the order ``g`` permutes them (``g XOR g'``), so that
    ``conv(flip_h x) = flip_h P_h conv(x)`` with ``P_h`` the permutation of each field's four channels.
    The full weight is built from the shared one at each call (four flips of a small tensor).
    """

    def __init__(
        self,
        in_channels: int,
        out_fields: int,
        kernel: int,
        *,
        stride: int = 1,
        padding: int = 0,
        lifting: bool = False,
        wrap_borders: bool = False,
    ) -> None:
        super().__init__()
        if not lifting and in_channels % GROUP:
            raise ValueError(f"a group layer's input holds fields of {GROUP} channels, got {in_channels}")
        self.lifting, self.stride, self.padding, self.wrap_borders = lifting, stride, padding, wrap_borders
        # a group layer's kernels (out field, in field, relative flip) flattened to (out, in × flip)
        self.weight = nn.Parameter(torch.empty(out_fields, in_channels, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(out_fields))
        fan_in = in_channels * kernel * kernel
        nn.init.uniform_(self.weight, -(fan_in**-0.5), fan_in**-0.5)  # nn.Conv2d's default range

    def full_weight(self) -> torch.Tensor:
        """The (fields × 4, in channels, k, k) weight of the equivalent ordinary convolution."""
        if self.lifting:
            kernels = [flip_kernels(self.weight, g) for g in range(GROUP)]
        else:
            fields = self.weight.unflatten(1, (-1, GROUP))
            kernels = [
                flip_kernels(fields[:, :, [g ^ h for h in range(GROUP)]], g).flatten(1, 2)
                for g in range(GROUP)
            ]
        return torch.stack(kernels, 1).flatten(0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padding = self.padding
        if self.wrap_borders and padding:
            x, padding = wrap(x, padding, padding), 0
        bias = self.bias.repeat_interleave(GROUP)
        return functional.conv2d(x, self.full_weight(), bias, self.stride, padding)


class FieldNorm(nn.Module):
    """A MONAI batch or instance norm with one set of statistics and affine weights per field."""

    def __init__(self, norm: CodecNorm, fields: int) -> None:
        super().__init__()
        self.norm = get_norm_layer(norm, spatial_dims=3, channels=fields)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        return cast(torch.Tensor, self.norm(x.reshape(n, c // GROUP, GROUP, h, w))).reshape(n, c, h, w)


class FlipResidualUnit(nn.Module):
    """MONAI's two-subunit ``ResidualUnit`` (conv, norm, activation, twice, plus a convolution on the
    skip path), built from flip-group layers with symmetric strides."""

    def __init__(
        self,
        in_channels: int,
        out_fields: int,
        *,
        stride: int,
        norm: CodecNorm,
        activation: CodecActivation,
        lifting: bool,
        wrap_borders: bool,
    ) -> None:
        super().__init__()
        first = 4 if stride == 2 else 3  # an even window samples a flipped map on the same grid
        act = monai_activation(activation)
        self.path = nn.Sequential(
            FlipConv2d(
                in_channels,
                out_fields,
                first,
                stride=stride,
                padding=1,
                lifting=lifting,
                wrap_borders=wrap_borders,
            ),
            FieldNorm(norm, out_fields),
            get_act_layer(act),
            FlipConv2d(out_fields * GROUP, out_fields, 3, padding=1, wrap_borders=wrap_borders),
            FieldNorm(norm, out_fields),
            get_act_layer(act),
        )
        same = stride == 1 and not lifting and in_channels == out_fields * GROUP
        self.skip = (
            nn.Identity()
            if same
            else FlipConv2d(in_channels, out_fields, stride, stride=stride, lifting=lifting)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.path(x) + self.skip(x)


class FlipEncoder(nn.Module):
    """:class:`privacysf.nets.conv.ConvEncoder`'s arguments, stages and widths (``width * 2**i``
    channels, a quarter as many fields), flip-equivariant, ending in a flip-invariant 1×1 head and tanh.
    A quarter of the plain encoder's weights at the same arithmetic: every kernel serves four flips."""

    def __init__(
        self,
        in_channels: int,
        code_channels: int,
        width: int,
        downsample: int,
        norm: CodecNorm,
        padding: Padding = "zeros",
        activation: CodecActivation = "prelu",
    ) -> None:
        super().__init__()
        self.downsample = downsample
        unit = partial(FlipResidualUnit, norm=norm, activation=activation, wrap_borders=padding == "circular")
        layers: list[nn.Module] = []
        channels, lifting = in_channels, True
        for i in range(downsampling_stages(downsample)):
            fields = width * 2**i // GROUP
            layers.append(unit(channels, fields, stride=2, lifting=lifting))
            channels, lifting = fields * GROUP, False
        layers.append(unit(channels, channels // GROUP, stride=1, lifting=False))
        self.net = nn.Sequential(*layers)
        self.head = nn.Conv2d(channels // GROUP, code_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] % self.downsample or x.shape[-1] % self.downsample:
            # a stride-2 window of an odd-sized map is not carried onto the grid by a flip
            raise ValueError(
                f"a flip-equivariant encoder needs image sides divisible by {self.downsample}, got "
                f"{tuple(x.shape[-2:])}"
            )
        features = self.net(x)
        n, c, h, w = features.shape
        pooled = features.reshape(n, c // GROUP, GROUP, h, w).mean(2)  # the same for every flip
        return torch.tanh(self.head(pooled))
