"""Inference copies of the center's convolutional networks: batch norms folded into their convolutions,
weights in channels-last layout.

At inference a batch norm is a fixed per-channel scale and shift, so it folds into the convolution
before it (``torch.nn.utils.fusion``) and one pass over each feature map goes. Channels-last lets the
CPU's oneDNN convolutions run without reordering every map; with batch norm folded away it measured
(one thread, 256², batch 8, `tools/mapper_latency.py` for the full table) 1.6× faster on the image
encoder and about 2× on the mask decoder. MONAI's U-Net, with instance norm, ran slower in that
layout, and an instance norm cannot be folded (its statistics are the image's own), so networks that
hold one are left as they are.

The copy answers the same as the original up to float rounding (tested) and is for inference only:
its batch norms are gone, so it can neither train nor have its statistics recalibrated, and its
state dict is not a checkpoint's.
"""

from __future__ import annotations

import copy
from typing import TypeVar

import torch
from monai.networks.blocks import Convolution
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

M = TypeVar("M", bound=nn.Module)

_PER_IMAGE_NORMS = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.GroupNorm, nn.LayerNorm)


def inference_copy(module: M) -> M:
    """An eval-mode copy of ``module`` with every MONAI ``Convolution``'s batch norm folded into its
    convolution, in channels-last layout; an eval-mode copy unchanged where a per-image norm remains."""
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
    return served.to(memory_format=torch.channels_last)  # type: ignore[call-overload]


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
