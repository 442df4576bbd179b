"""Inference copies of the center's convolutional networks: batch norms folded into their convolutions,
weights in channels-last layout, activations and residual sums in place.

At inference a batch norm is a fixed per-channel scale and shift, so it folds into the convolution
before it (``torch.nn.utils.fusion``) and one pass over each feature map goes. Channels-last lets the
CPU's oneDNN convolutions run without reordering every map; with batch norm folded away it measured
(one thread, 256², batch 8, `tools/mapper_latency.py` for the full table) 1.6× faster on the image
encoder and about 2× on the mask decoder. MONAI's U-Net, with instance norm, ran slower in that
layout, and an instance norm cannot be folded (its statistics are the image's own), so networks that
hold one are left as they are.

Each activation of a MONAI block writes over its input, the fresh output of the convolution (or
folded norm) just before it, which no other layer reads, instead of allocating a new map
(:class:`InplaceActivation`), and each residual unit adds its shortcut into its convolutions' output
(:class:`ResidualSum`): at 256² the activations took the encode and decode of a query to 0.92 of
their time at batch 1 and 0.80 at batch 32, and the sums to 0.93-0.98 and 0.88-0.93 of that again
(docs/results.md, "Served center networks"). Computing the 1×1 convolutions as matrix products over
the channels-last view was tried beside them and left out: no faster at batch 1, slower at 32.

The copy answers the same as the original up to float rounding (tested) and is for inference only:
its batch norms are gone, so it can neither train nor have its statistics recalibrated, and its
state dict is not a checkpoint's.
"""

from __future__ import annotations

import copy
from typing import TypeVar

import torch
from monai.networks.blocks import ADN, Convolution, ResidualUnit
from torch import nn
from torch.nn import functional
from torch.nn.utils.fusion import fuse_conv_bn_eval

from privacysf.nets.conv import swap_children

M = TypeVar("M", bound=nn.Module)

_PER_IMAGE_NORMS = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.GroupNorm, nn.LayerNorm)


class InplaceActivation(nn.Module):
    """A ReLU, or a leaky ReLU of fixed slope (what a PReLU with one learned slope is at inference),
    that writes over its input when no gradient is wanted: the input is the output of the layer just
    before it, which nothing else reads."""

    def __init__(self, slope: float, replaces: type[nn.Module]) -> None:
        super().__init__()
        self.slope = slope
        self.replaces = replaces
        """The activation class this one computes, so a served network still says what it trained with."""

    @staticmethod
    def of(module: nn.Module) -> InplaceActivation | None:
        """The in-place equivalent of ``module``, or None where there is none (a PReLU per channel)."""
        if isinstance(module, nn.PReLU) and module.num_parameters == 1:
            return InplaceActivation(float(module.weight.detach()), nn.PReLU)
        if isinstance(module, nn.LeakyReLU):
            return InplaceActivation(module.negative_slope, nn.LeakyReLU)
        if isinstance(module, nn.ReLU):
            return InplaceActivation(0.0, nn.ReLU)
        return None

    def extra_repr(self) -> str:
        return f"{self.replaces.__name__}, slope={self.slope:g}, in place"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad:
            return functional.leaky_relu(x, self.slope)
        return functional.leaky_relu_(x, self.slope)


class ResidualSum(nn.Module):
    """A MONAI ``ResidualUnit`` whose sum is written into its convolutions' output, which is fresh
    and read by nothing else, when no gradient is wanted (the same submodules, so the same values)."""

    def __init__(self, unit: ResidualUnit) -> None:
        super().__init__()
        self.conv, self.residual = unit.conv, unit.residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual, out = self.residual(x), self.conv(x)
        return out + residual if out.requires_grad else out.add_(residual)


def inference_copy(module: M) -> M:
    """An eval-mode copy of ``module`` with every MONAI ``Convolution``'s batch norm folded into its
    convolution, the activations and residual sums of MONAI blocks in place, in channels-last layout;
    an eval-mode copy unchanged where a per-image norm remains."""
    served = copy.deepcopy(module).eval()
    if any(isinstance(m, _PER_IMAGE_NORMS) for m in served.modules()):
        return served
    for unit in served.modules():
        norm = _leading_batch_norm(unit)
        conv = getattr(unit, "conv", None)
        # torch folds a transposed convolution's scale per output channel correctly for one group only
        if norm is not None and isinstance(conv, (nn.Conv2d, nn.ConvTranspose2d)) and conv.groups == 1:
            unit.conv = fuse_conv_bn_eval(conv, norm, transpose=isinstance(conv, nn.ConvTranspose2d))
            setattr(unit.adn, "N", nn.Identity())  # noqa: B010 (the step is named N in MONAI's ADN)
        if isinstance(unit, ADN) and (inplace := InplaceActivation.of(getattr(unit, "A", nn.Identity()))):
            setattr(unit, "A", inplace)  # noqa: B010 (the step is named A in MONAI's ADN)
    swap_children(served, lambda m: ResidualSum(m) if isinstance(m, ResidualUnit) else None)
    # eval again: the modules put in above start in training mode, and served networks are switched
    # only where their root is training (``privacysf.common.torchutil.evaluating``)
    return served.eval().to(memory_format=torch.channels_last)  # type: ignore[call-overload]


def _leading_batch_norm(unit: nn.Module) -> nn.BatchNorm2d | None:
    """The batch norm that directly follows a MONAI ``Convolution``'s convolution (its default order
    is norm, dropout, activation): only such a norm acts on the convolution's output alone, so only it
    folds. None for any other module or order."""
    if not isinstance(unit, Convolution):
        return None
    steps = list(getattr(unit, "adn", nn.Sequential()).named_children())
    if steps and steps[0][0] == "N" and isinstance(steps[0][1], nn.BatchNorm2d):
        return steps[0][1]
    return None
