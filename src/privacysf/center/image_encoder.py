"""The image encoder's training: one objective object per mode of :data:`IMAGE_MODES`.

A mode is an objective object, so a new one (the adversarial ``private`` mode) is one more entry, not
a new branch through the code. Every mode trains against the center's finished mask codec
(:mod:`privacysf.center.codecs`), which stays frozen here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from monai.losses import DiceCELoss
from torch import nn

from privacysf.center.codecs import (
    CenterEncoder,
    MaskCodec,
    build_image_decoder,
    build_image_encoder,
    codec_signature,
    decode_masks,
    equivariance_penalty,
    token_grid,
)
from privacysf.center.norm_statistics import load_shared_state
from privacysf.common.torchutil import apply_in_batches
from privacysf.common.training import FitResult, fit
from privacysf.config import ExperimentConfig
from privacysf.data.loader import batched, slice_batches
from privacysf.data.preprocess import SliceSet
from privacysf.exchange import grid_to_tokens, tokens_to_grid
from privacysf.exchange.rounding import wire_rounding
from privacysf.metrics import validation_dice
from privacysf.nets.mappers import build_task_head


class AutoencoderObjective:
    """``autoencoder`` mode: the code must let a (center-kept) image decoder rebuild the image.

    It takes the training ``masks`` as every mode does, and has no use for them."""

    def __init__(
        self,
        cfg: ExperimentConfig,
        encoder: nn.Module,
        codec: MaskCodec,
        device,
        masks: np.ndarray,
    ) -> None:
        self.encoder = encoder
        self.decoder = build_image_decoder(cfg.codec).to(device)

    def modules(self) -> dict[str, nn.Module]:
        return {"image_decoder": self.decoder}

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.mse_loss(self.decoder(self.encoder(x)), x)

    def score(self, val: SliceSet, device) -> float:
        errors = [
            torch.nn.functional.mse_loss(self.decoder(self.encoder(xb)), xb).item()
            for xb in (torch.from_numpy(b).to(device) for b in batched(val.images, 32))
        ]
        return -float(np.mean(errors))


class TaskObjective:
    """``task`` mode: a center-side head must predict the mask code from the image code.

    The code keeps what segmentation needs and is free to drop the rest. The head is trained on the
    code MSE (what the server will optimise) plus the Dice-CE of the decoded mask through the frozen
    mask decoder, so the code is shaped by segmentation quality, not only by code distance. Codes go
    through the wire's rounding (``codec.wire_dtype``, straight through) wherever they would travel:
    the image code into the head, the mask code as its target and as the reply that is decoded, so a
    coarse dtype (``uint2``) is learnt as sent, as the mask codec learns it.

    ``masks`` (the training label maps) set the loss's class weights with
    ``codec.task_class_weights=balanced``.
    """

    def __init__(
        self,
        cfg: ExperimentConfig,
        encoder: nn.Module,
        codec: MaskCodec,
        device,
        masks: np.ndarray,
    ) -> None:
        c = cfg.codec
        self.encoder, self.codec = encoder, codec
        self.grid = token_grid(cfg.data.size, c)
        kind = c.task_head_for(codec.num_classes)
        head = build_task_head(cfg.mapper, kind, self.grid, c.image_channels, c.mask_channels)
        self.head = head.to(device)
        weights = None
        if c.task_class_weights == "balanced":
            weights = class_loss_weights(masks, codec.num_classes).to(device)
        self.seg_loss = DiceCELoss(to_onehot_y=True, softmax=True, weight=weights)
        self.wire_dtype = c.wire_dtype
        for p in codec.parameters():
            p.requires_grad_(False)
        codec.eval()  # frozen: its batch norms use, and keep, the statistics of the codec's training

    def modules(self) -> dict[str, nn.Module]:
        return {"task_head": self.head}

    def _sent(self, tokens: torch.Tensor) -> torch.Tensor:
        return wire_rounding(tokens, self.wire_dtype)

    def _predict_code(self, x: torch.Tensor) -> torch.Tensor:
        return self._sent(self.head(self._sent(grid_to_tokens(self.encoder(x)))))

    def task_loss(self, code: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = self._sent(grid_to_tokens(self.codec.encode(y)))
        predicted = self.head(self._sent(grid_to_tokens(code)))
        logits = self.codec.decode(tokens_to_grid(self._sent(predicted), self.grid))
        return torch.nn.functional.mse_loss(predicted, target) + self.seg_loss(logits, y[:, None])

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.task_loss(self.encoder(x), y)

    def score(self, val: SliceSet, device) -> float:
        codes = apply_in_batches(self._predict_code, val.images, device).numpy()
        labels = decode_masks(self.codec, codes, self.grid, device)
        return validation_dice(labels, val.masks, self.codec.num_classes)


def class_loss_weights(masks: np.ndarray, num_classes: int) -> torch.Tensor:
    """One weight per class, 1/sqrt of its share of the pixels of ``masks``, scaled to mean 1.

    Unweighted, a class on a few per cent of the pixels adds little to the cross-entropy while the
    code cannot yet tell it apart, and an encoder can settle without it. The square root keeps a rare
    class from outweighing the rest; a class absent from ``masks`` gets the rarest present one's weight.
    (The mask codec balances classes differently, by which slices it draws:
    :func:`privacysf.data.loader.class_balanced_weights`.)
    """
    counts = np.bincount(masks.ravel(), minlength=num_classes)[:num_classes].astype(np.float64)
    if not counts.any():
        return torch.ones(num_classes)  # no training pixel: nothing to balance
    present = counts > 0
    weights = np.zeros(num_classes)
    weights[present] = (counts[present] / counts.sum()) ** -0.5
    weights[~present] = weights[present].max()
    return torch.tensor(weights / weights.mean(), dtype=torch.float32)


class _ReverseGradient(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by ``-weight`` (Ganin & Lempitsky, 2015)."""

    @staticmethod
    def forward(ctx, code: torch.Tensor, weight: float) -> torch.Tensor:
        ctx.weight = weight
        return code.view_as(code)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.weight * grad, None


class PrivateObjective(TaskObjective):
    """``private`` mode: ``task`` plus an attacker decoder trained in the loop to rebuild the image.

    The attacker minimises its reconstruction error from the code; the gradient reaching the encoder
    through it is reversed and scaled by λ (``codec.private_weight``), so the encoder learns codes that
    serve the task head while spoiling the best reconstruction the attacker can find. λ trades Dice for
    privacy; the attack suite measures both ends.
    """

    def __init__(
        self,
        cfg: ExperimentConfig,
        encoder: nn.Module,
        codec: MaskCodec,
        device,
        masks: np.ndarray,
    ) -> None:
        super().__init__(cfg, encoder, codec, device, masks)
        self.weight = cfg.codec.private_weight
        self.attacker = build_image_decoder(cfg.codec).to(device)

    def modules(self) -> dict[str, nn.Module]:
        return {**super().modules(), "attacker_decoder": self.attacker}

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        code = self.encoder(x)
        reconstruction = self.attacker(_ReverseGradient.apply(code, self.weight))
        return self.task_loss(code, y) + torch.nn.functional.mse_loss(reconstruction, x)


IMAGE_MODES: dict[str, Callable[..., AutoencoderObjective | TaskObjective]] = {
    "autoencoder": AutoencoderObjective,
    "task": TaskObjective,
    "private": PrivateObjective,
}


def train_image_encoder(
    cfg: ExperimentConfig,
    train: SliceSet,
    val: SliceSet,
    codec: MaskCodec,
    device: torch.device,
    checkpoint: Path | None,
    initial: dict[str, dict] | None = None,
) -> tuple[CenterEncoder, FitResult, dict[str, nn.Module]]:
    """Train the image encoder in its mode; also return the mode's center-side parts (decoder, head).

    ``initial`` maps ``"model"`` and the mode's part names to state dicts to start from (a federated
    round starts from the averaged encoder and head).
    """
    mode = cfg.codec.image_mode  # checked against config.IMAGE_MODES when the config was built
    c = cfg.codec
    encoder = build_image_encoder(c).to(device)
    objective = IMAGE_MODES[mode](cfg, encoder, codec, device, train.masks)
    if initial:
        for name, module in {"model": encoder, **objective.modules()}.items():
            load_shared_state(module, initial[name])
    batches = slice_batches(train, cfg.train, device, seed_offset=1)
    penalty = equivariance_penalty(cfg)

    def step(batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        loss = objective.loss(*batch)
        return loss + penalty(encoder, batch[0]) if penalty else loss

    result = fit(
        encoder,
        batches,
        step,
        lambda: objective.score(val, device),
        cfg.train,
        f"center image encoder ({mode})",
        checkpoint,
        codec_signature(cfg, codec.num_classes, "image-encoder"),
        modules=objective.modules(),
    )
    return encoder, result, objective.modules()
