"""Train and score the reference design on one dataset, with the same split, epochs and optimiser.

The three stages mirror the method's: the image autoencoder and the mask autoencoder train at the
center, then the server fits its per-scale mappers on the uploaded latents with an MSE loss. Every
stage goes through the project's one training loop, so times and memory are measured alike.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from monai.losses import DiceCELoss
from torch import nn

from privacysf.common.figures import curves
from privacysf.common.runs import write_json
from privacysf.common.torchutil import apply_in_batches, class_labels
from privacysf.common.training import fit
from privacysf.config import ExperimentConfig
from privacysf.data.loader import slice_batches
from privacysf.errors import ConfigError
from privacysf.metrics import validation_dice
from privacysf.metrics.evaluation import save_test_overlays, score_test
from privacysf.reference.center import (
    LATENT_CHANNELS,
    SCALES,
    MaskAutoencoder,
    MultiScaleDecoder,
    MultiScaleEncoder,
    ReferenceCenter,
    latents_to_messages,
    messages_to_latents,
)
from privacysf.reference.server import ReferenceMapper, ReferenceServer
from privacysf.workflows.inprocess import payload_bytes
from privacysf.workflows.session import open_run

LABEL = "reference"
DESCRIPTION = (
    "Re-implementation of the published Improved Privacy-SF design from the paper's description "
    "(multi-scale autoencoder latents, a pyramid-pooling mapper per scale, MSE on latents, float32 latents)"
)


def _check_size(size: int) -> None:
    if size % max(SCALES):
        raise ConfigError(f"the reference design needs data.size divisible by {max(SCALES)}, got {size}")


def train_reference(cfg: ExperimentConfig, data, device: torch.device):
    """The reference's center and server, trained; returns them with each stage's fit result."""
    _check_size(cfg.data.size)
    k = data.info.num_classes
    batches = slice_batches(data.train, cfg.train, device)

    image_encoder, image_decoder = MultiScaleEncoder(1).to(device), MultiScaleDecoder(1).to(device)

    def image_step(batch):
        x, _ = batch
        return nn.functional.mse_loss(image_decoder(image_encoder(x)), x)

    def image_validate() -> float:
        val = torch.from_numpy(data.val.images[:64]).to(device)
        return -float(nn.functional.mse_loss(image_decoder(image_encoder(val)), val))

    image_fit = fit(
        image_encoder,
        batches,
        image_step,
        image_validate,
        cfg.train,
        "reference image autoencoder",
        modules={"decoder": image_decoder},
    )

    masks = MaskAutoencoder(k).to(device)
    dice_ce = DiceCELoss(to_onehot_y=True, softmax=True)

    def mask_step(batch):
        _, y = batch
        return dice_ce(masks.decoder(masks.encode(y)), y[:, None])

    def mask_validate() -> float:
        pred = apply_in_batches(
            lambda y: class_labels(masks.decoder(masks.encode(y))), data.val.masks, device
        )
        return validation_dice(pred.numpy(), data.val.masks, k)

    mask_fit = fit(masks, batches, mask_step, mask_validate, cfg.train, "reference mask autoencoder")

    # The server's data: what the center uploads, read back from float32 wire messages.
    def uploaded(encode, array: np.ndarray, kind: str) -> list[torch.Tensor]:
        message = latents_to_messages(apply_in_batches(encode, array, device), kind)
        return messages_to_latents(message, kind, cfg.data.size, device)

    upload = {
        split: (uploaded(image_encoder, part.images, "image"), uploaded(masks.encode, part.masks, "mask"))
        for split, part in (("train", data.train), ("val", data.val))
    }
    mapper = ReferenceMapper(LATENT_CHANNELS).to(device)
    inputs, targets = upload["train"]

    def latent_batches(epoch: int):
        order = torch.from_numpy(np.random.default_rng(cfg.train.seed + epoch).permutation(len(inputs[0])))
        for start in range(0, len(order), cfg.train.batch_size):
            index = order[start : start + cfg.train.batch_size]
            yield [z[index] for z in inputs], [z[index] for z in targets]

    def mapper_step(batch):
        x, y = batch
        return sum(nn.functional.mse_loss(p, t) for p, t in zip(mapper(x), y, strict=True))

    def mapper_validate() -> float:
        x, y = upload["val"]
        return -float(sum(nn.functional.mse_loss(p, t) for p, t in zip(mapper(x), y, strict=True)))

    mapper_fit = fit(
        mapper, latent_batches, mapper_step, mapper_validate, cfg.train, "reference server mappers"
    )
    center = ReferenceCenter(image_encoder.eval(), masks.eval(), cfg.data.size, device)
    fits = {"image_autoencoder": image_fit, "mask_autoencoder": mask_fit, "server_mapper": mapper_fit}
    return center, ReferenceServer(mapper, device), fits


def untrained_reference(
    num_classes: int, size: int, device: torch.device
) -> tuple[ReferenceCenter, ReferenceServer]:
    """Fresh reference networks at ``size``²: exact payloads and representative timings, no training."""
    _check_size(size)
    center = ReferenceCenter(
        MultiScaleEncoder(1).to(device).eval(), MaskAutoencoder(num_classes).to(device).eval(), size, device
    )
    return center, ReferenceServer(ReferenceMapper(LATENT_CHANNELS).to(device), device)


def run_reference(cfg: ExperimentConfig) -> tuple[Path, dict]:
    """``privacysf reference``-style run: train, score the test split, write the run folder."""
    _check_size(cfg.data.size)
    session = open_run(cfg, LABEL)
    data, device, run_dir = session.data, session.device, session.run_dir
    center, server, fits = train_reference(cfg, data, device)
    pred = center.segment(server, data.test.images)
    metrics = {
        "dataset": data.info.name,
        "split": data.split,
        "reference": {
            "description": DESCRIPTION,
            "test": score_test(pred, data),
            "payload_bytes_per_query": payload_bytes(center, server, data.test.images[:1]),
            "raw_image_bytes": data.raw_image_bytes,
            "raw_image_dtype": data.info.stored_dtype,
            "training_cost": {name: result.cost() for name, result in fits.items()},
        },
    }
    write_json(run_dir / "metrics.json", metrics)
    write_json(run_dir / "history.json", {name: r.history for name, r in fits.items()})
    save_test_overlays(run_dir / "figures" / "overlays.png", data, {"reference": pred})
    curves(
        run_dir / "figures" / "curves.png", {name.replace("_", " "): r.history for name, r in fits.items()}
    )
    return run_dir, metrics
