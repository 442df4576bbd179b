"""How far a center's encoders commute with the code transforms the server can apply.

The server augments code pairs (``privacysf.server.augment``) because it never sees an image. A
transformed pair is a valid training example only if the transformed image code is the code of the
transformed image, and likewise for the mask: ``E(T_image(x)) == T_code(E(x))``. Convolutions commute
with shifts by whole tokens (up to the border), not with flips or turns unless their kernels are
symmetric, and a ``tanh`` head does not commute with mixing. This module measures each pair on real
slices, center side (it reads images), so the ablation's choices rest on numbers.

Each :class:`CodeTransform` pairs the transform of an image (or one-hot mask) batch, (N, C, H, W),
with its counterpart on the code grid, (N, C, h, w), with every parameter fixed (which axis, how many
tokens, which segment), so the two sides do the same thing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from privacysf.common.torchutil import class_labels
from privacysf.metrics.segmentation import validation_dice

if TYPE_CHECKING:  # the codecs train with this module's penalty
    from privacysf.center.codecs import MaskCodec

IDENTITY = "none (reference)"
"""The first row of :func:`transforms`: zero error, and the codec's own ceiling as decoded Dice."""

Pair = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(batch, its partner batch) -> transformed batch; one-image transforms ignore the partner."""


@dataclass(frozen=True)
class CodeTransform:
    """One transform on both sides. ``server`` names the ``augment`` option it stands for (None: a
    candidate the server does not apply yet). ``labels`` says whether it maps a label map to a label map
    (a mix of two masks is no label map, so its decoded Dice is not defined)."""

    name: str
    server: str | None
    image: Pair
    code: Pair
    labels: bool = True


def _segment_mask(shape: tuple[int, int], start: float, fraction: float) -> torch.Tensor:
    """The (h, w) tokens of one contiguous run in raster order, as ``augment.splice`` cuts them."""
    length = shape[0] * shape[1]
    first = int(start * length)
    chosen = torch.zeros(length, dtype=torch.bool)
    chosen[first : first + max(1, int(fraction * length))] = True
    return chosen.reshape(shape)


def _box_mask(shape: tuple[int, int]) -> torch.Tensor:
    """The (h, w) tokens of the central box, half of each side, as ``augment.cutmix`` cuts boxes."""
    h, w = shape
    chosen = torch.zeros(shape, dtype=torch.bool)
    chosen[h // 4 : h // 4 + max(1, h // 2), w // 4 : w // 4 + max(1, w // 2)] = True
    return chosen


def _paste(x: torch.Tensor, partner: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Replace the chosen (h, w) ``tokens`` of ``x`` (or the pixels under them) with ``partner``'s."""
    factor = x.shape[-1] // tokens.shape[1]
    region = tokens.repeat_interleave(factor, 0).repeat_interleave(factor, 1).to(x.device)
    return torch.where(region, partner, x)


def transforms(grid: tuple[int, int], downsample: int, max_shift: int = 2) -> list[CodeTransform]:
    """The server's reorderings and mixes with fixed parameters, plus 90° turns (a candidate), after
    the identity, whose decoded Dice is the codec's own ceiling on the slices."""

    def one(fn: Callable[[torch.Tensor], torch.Tensor]) -> Pair:
        return lambda x, _: fn(x)

    def shift(k: int, scale: int) -> Pair:
        return one(lambda t: t.roll((k * scale, k * scale), dims=(-2, -1)))

    segment, box = _segment_mask(grid, start=1 / 3, fraction=1 / 4), _box_mask(grid)

    def splice(x: torch.Tensor, partner: torch.Tensor) -> torch.Tensor:
        return _paste(x, partner, segment)

    def cutmix(x: torch.Tensor, partner: torch.Tensor) -> torch.Tensor:
        return _paste(x, partner, box)

    def mix(x: torch.Tensor, partner: torch.Tensor) -> torch.Tensor:
        return 0.5 * x + 0.5 * partner

    def flipped(*dims: int) -> Pair:
        return one(lambda t: t.flip(dims))

    identity, turn = one(lambda t: t), one(lambda t: t.rot90(1, (-2, -1)))
    flip_lr, flip_ud, half_turn = flipped(-1), flipped(-2), flipped(-2, -1)
    return [
        CodeTransform(IDENTITY, None, identity, identity),
        CodeTransform("flip left-right", "flip", flip_lr, flip_lr),
        CodeTransform("flip up-down", "flip", flip_ud, flip_ud),
        CodeTransform("reverse (180° turn)", "reverse", half_turn, half_turn),
        CodeTransform("90° turn", None, turn, turn),
        *(
            CodeTransform(f"shift {k} token(s)", "shift", shift(k, downsample), shift(k, 1))
            for k in sorted({1, max(max_shift, 1)})
        ),
        CodeTransform("splice a quarter of the tokens", "splice", splice, splice),
        CodeTransform("cutmix the central box (a quarter)", "cutmix", cutmix, cutmix),
        CodeTransform("mixup, weight 0.5", "mixup", mix, mix, labels=False),
    ]


def residual(
    encoder: Callable[[torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    transform: CodeTransform,
    codes: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``E(T x) - T E(x)``, ``T E(x)`` and ``E(x) - E(partner)``, each slice paired with the next.

    ``codes`` is ``E(x)`` where the caller has it already (the mask codec's training step), so it is
    not computed twice. Differentiable: the measure below reads it without gradients, the training
    penalty with them.
    """
    partner = inputs.roll(1, dims=0)
    codes = encoder(inputs) if codes is None else codes
    partner_codes = codes.roll(1, dims=0)  # the partner's code, without a second pass
    expected = transform.code(codes, partner_codes)
    return encoder(transform.image(inputs, partner)) - expected, expected, codes - partner_codes


def equivariance_error(
    encoder: Callable[[torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    transform: CodeTransform,
    codes: torch.Tensor | None = None,
) -> dict[str, float]:
    """Relative error of ``E(T x)`` against ``T E(x)`` over a batch (pairs: each slice with the next).

    ``relative`` divides the error's norm by the norm of the transformed code; ``vs_other_slice`` by the
    mean distance between two different slices' codes, the scale a mapper has to tell apart (a value
    near 1 means the transformed code is as far from the truth as another slice's code is).
    """
    with torch.no_grad():
        error, expected, between = residual(encoder, inputs, transform, codes)
        return {
            "relative": float(error.norm() / expected.norm()),
            "vs_other_slice": float(_mean_norm(error) / _mean_norm(between)),
        }


def _mean_norm(batch: torch.Tensor) -> torch.Tensor:
    return batch.flatten(1).norm(dim=1).mean()


class EquivariancePenalty:
    """``codec.equivariance`` × the squared error of one transform drawn per training step, over the
    squared distance between the batch's slices' codes (the ``vs_other_slice`` scale).

    Scaled by the distance between slices rather than by the code's norm, so neither a constant offset
    (a larger norm) nor codes that stop telling slices apart can make the error look small.

    Added to an encoder's loss so that a transformed code becomes the code of the transformed input,
    and the server's augmentations of code pairs then show it pairs that real slices produce. Draws from
    every transform of :func:`transforms` but the identity, from its own generator (``train.seed``), so
    switching it on does not change the batches the rest of training sees.
    """

    def __init__(self, weight: float, grid: tuple[int, int], downsample: int, seed: int) -> None:
        self.weight = weight
        self.choices = [t for t in transforms(grid, downsample) if t.name != IDENTITY]
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(
        self,
        encoder: Callable[[torch.Tensor], torch.Tensor],
        inputs: torch.Tensor,
        codes: torch.Tensor | None = None,
    ) -> torch.Tensor:
        transform = self.choices[int(torch.randint(len(self.choices), (1,), generator=self.generator))]
        error, expected, between = residual(encoder, inputs, transform, codes)
        scale = between.pow(2).sum()
        if scale <= 1e-6 * expected.pow(2).sum().detach():  # one slice, or identical ones (empty masks)
            return inputs.new_zeros(())
        return self.weight * error.pow(2).sum() / scale


@dataclass
class EquivarianceRow:
    """One transform's errors on a run's slices."""

    transform: str
    server_option: str | None
    image_relative: float
    image_vs_other_slice: float
    mask_relative: float
    mask_vs_other_slice: float
    decoded_dice: float | None
    """Dice of decoding ``T E(y)`` against ``T y`` (split-summed, classes present): whether the mask
    decoder reads the transformed code as the transformed mask. None for mixes."""


def measure(
    image_encoder: nn.Module,
    codec: MaskCodec,
    images: np.ndarray,
    masks: np.ndarray,
    downsample: int,
    max_shift: int = 2,
) -> list[EquivarianceRow]:
    """Every transform's errors for a center's encoders on (N, 1, H, W) images and (N, H, W) masks,
    with shifts of one token and of ``max_shift`` tokens (the longest the server applies)."""
    device = next(codec.parameters()).device
    x = torch.from_numpy(images).to(device)
    y = codec.inputs(torch.from_numpy(masks).to(device))
    grid = (images.shape[-2] // downsample, images.shape[-1] // downsample)
    image_encoder.eval()
    codec.eval()
    with torch.no_grad():  # each encoder's codes of the untransformed slices, once for all transforms
        image_codes, codes = image_encoder(x), codec.encoder(y)
    rows = []
    for t in transforms(grid, downsample, max_shift):
        image_error = equivariance_error(image_encoder, x, t, image_codes)
        mask_error = equivariance_error(codec.encoder, y, t, codes)
        dice = None
        if t.labels:
            with torch.no_grad():
                decoded = class_labels(codec.decode(t.code(codes, codes.roll(1, dims=0))))
                truth = class_labels(t.image(y, y.roll(1, dims=0)))
            dice = validation_dice(decoded.cpu().numpy(), truth.cpu().numpy(), codec.num_classes)
        rows.append(
            EquivarianceRow(
                t.name,
                t.server,
                image_error["relative"],
                image_error["vs_other_slice"],
                mask_error["relative"],
                mask_error["vs_other_slice"],
                dice,
            )
        )
    return rows
