"""The raw-image MONAI U-Net: the privacy-agnostic upper bound every Privacy-SF result is compared to.

It sees raw images, so it can never run on the server; it exists to tell users what the privacy
costs, measured on the same split, size and epoch budget.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from monai.losses import DiceCELoss
from monai.networks.nets import UNet

from privacysf.common.torchutil import class_labels, load_checkpoint
from privacysf.common.training import FitResult, fit
from privacysf.config import ExperimentConfig, UNetConfig
from privacysf.data.loader import batched, slice_batches
from privacysf.data.prepare import PreparedData
from privacysf.metrics import validation_dice


def build_unet(cfg: UNetConfig, num_classes: int) -> UNet:
    return UNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=num_classes,
        channels=cfg.channels,
        strides=cfg.strides,
        num_res_units=cfg.num_res_units,
    )


def unet_signature(cfg: ExperimentConfig, num_classes: int) -> dict:
    """What a U-Net checkpoint must agree on with the run that loads it."""
    return {
        "kind": "raw-unet",
        "num_classes": num_classes,
        "size": cfg.data.size,
        "channels": list(cfg.unet.channels),
        "strides": list(cfg.unet.strides),
        "num_res_units": cfg.unet.num_res_units,
    }


@torch.no_grad()
def predict_labels(
    model: torch.nn.Module, images: np.ndarray, device: torch.device, batch_size: int = 32
) -> np.ndarray:
    model.eval()
    out = [
        class_labels(model(torch.from_numpy(chunk).to(device))).cpu().numpy()
        for chunk in batched(images, batch_size)
    ]
    return np.concatenate(out) if out else np.zeros((0, *images.shape[2:]), np.int64)


def train_unet(
    cfg: ExperimentConfig,
    data: PreparedData,
    device: torch.device,
    checkpoint: Path | None,
    initial: dict[str, dict] | None = None,
) -> tuple[UNet, FitResult]:
    """Train on ``data``; ``initial`` (``{"model": state_dict}``) starts from given weights, as a
    federated round does."""
    k = data.info.num_classes
    model = build_unet(cfg.unet, k).to(device)
    if initial:
        model.load_state_dict(initial["model"])
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    val = data.val

    def step(batch):
        x, y = batch
        return loss_fn(model(x), y[:, None])

    def validate() -> float:
        return validation_dice(predict_labels(model, val.images, device), val.masks, k)

    batches = slice_batches(data.train, cfg.train, device)
    result = fit(model, batches, step, validate, cfg.train, "raw U-Net", checkpoint, unet_signature(cfg, k))
    return model, result


def load_unet(cfg: ExperimentConfig, num_classes: int, checkpoint: Path, device: torch.device) -> UNet:
    state = load_checkpoint(checkpoint, unet_signature(cfg, num_classes))
    model = build_unet(cfg.unet, num_classes)
    model.load_state_dict(state["model"])
    return model.to(device).eval()
