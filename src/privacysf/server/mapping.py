"""The server's side of Privacy-SF: learn image code -> mask code from pairs of codes, then serve it.

:class:`MappingServer` only ever handles wire messages (``bytes``) and token tensors. It is built on
torch and the exchange format alone; nothing here can read an image or a mask, and the tests check
that importing this package loads no such module.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from privacysf.config import ORDER_AUGMENTATIONS, AugmentConfig, MapperConfig, TrainConfig
from privacysf.errors import ConfigError, WireFormatError
from privacysf.exchange import CodeBatch, decode_codes, encode_codes
from privacysf.exchange.wire import SCAN_ORDER
from privacysf.nets.mappers import ORDER_BLIND, build_mapper
from privacysf.server.augment import augment_pairs, pipeline
from privacysf.torchutil import load_checkpoint, resolve_device, save_checkpoint
from privacysf.training import EpochHook, FitResult, fit


class MappingServer:
    """Trains and serves the mapping network on codes received in the wire format."""

    def __init__(self, mapper: MapperConfig, augment: AugmentConfig, train: TrainConfig) -> None:
        self.mapper_cfg = mapper
        self.augment_cfg = augment
        self.train_cfg = train
        self.device = resolve_device(train.device)
        self.model: torch.nn.Module | None = None
        self.signature: dict = {}

    def initialise(
        self, grid: tuple[int, int], in_channels: int, out_channels: int, scan: str = SCAN_ORDER
    ) -> torch.nn.Module:
        """A fresh mapper for codes on ``grid`` with the given values per token and scan order."""
        if scan != SCAN_ORDER and not ORDER_BLIND[self.mapper_cfg.kind]:
            raise ConfigError(
                f"codes arrive in a secret ({scan}) token order, which the {self.mapper_cfg.kind} mapper "
                "cannot learn through; use mapper.kind=transformer"
            )
        if scan != SCAN_ORDER and any(getattr(self.augment_cfg, n) > 0 for n in ORDER_AUGMENTATIONS):
            raise ConfigError(
                f"augment.{'/'.join(ORDER_AUGMENTATIONS)} need the token order, which the center's "
                "secret permutation hides: set them to 0"
            )
        self.signature = {
            "role": "server-mapper",
            "grid": list(grid),
            "scan": scan,
            "in_channels": in_channels,
            "out_channels": out_channels,
            **asdict(self.mapper_cfg),
        }
        self.model = build_mapper(self.mapper_cfg, grid, in_channels, out_channels).to(self.device)
        return self.model

    def fit(
        self,
        train_images: bytes,
        train_masks: bytes,
        val_images: bytes,
        val_masks: bytes,
        checkpoint: Path | None = None,
        resume: Path | None = None,
        on_epoch: EpochHook | None = None,
    ) -> FitResult:
        """Train on uploaded code pairs; early stopping uses the validation code MSE (no decoder here).

        ``resume`` and ``on_epoch`` are passed to :func:`privacysf.training.fit` (restartable jobs).
        """
        x = decode_codes(train_images, expect_kind="image")
        y = decode_codes(train_masks, expect_kind="mask")
        vx = decode_codes(val_images, expect_kind="image", expect_tokens=x.shape[1:])
        vy = decode_codes(val_masks, expect_kind="mask", expect_tokens=y.shape[1:])
        if (
            x.shape[0] != y.shape[0]
            or vx.shape[0] != vy.shape[0]
            or len({x.grid, y.grid, vx.grid, vy.grid}) > 1
            or len({x.scan, y.scan, vx.scan, vy.scan}) > 1
        ):
            raise ConfigError(
                f"image codes {x.shape} and mask codes {y.shape} do not pair up one to one on one grid "
                "and scan order"
            )
        grid = x.grid
        model = self.initialise(grid, x.shape[2], y.shape[2], x.scan)
        device, cfg = self.device, self.train_cfg
        tx, ty = torch.from_numpy(x.tokens), torch.from_numpy(y.tokens)
        vtx, vty = torch.from_numpy(vx.tokens).to(device), torch.from_numpy(vy.tokens).to(device)
        steps = pipeline(self.augment_cfg)
        g = torch.Generator().manual_seed(cfg.seed)

        def batches(epoch: int):
            order = torch.from_numpy(np.random.default_rng(cfg.seed + epoch).permutation(len(tx)))
            for start in range(0, len(order), cfg.batch_size):
                index = order[start : start + cfg.batch_size]
                bx, by = augment_pairs(tx[index], ty[index], grid, steps, g)
                yield bx.to(device), by.to(device)

        def step(batch):
            bx, by = batch
            return torch.nn.functional.mse_loss(model(bx), by)

        def validate() -> float:
            return -float(torch.nn.functional.mse_loss(self.predict_tokens(vtx), vty))

        return fit(
            model,
            batches,
            step,
            validate,
            cfg,
            "server mapper",
            checkpoint,
            self.signature,
            resume=resume,
            on_epoch=on_epoch,
        )

    @torch.no_grad()
    def predict_tokens(self, tokens: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Mapped (N, L, C_out) tokens for (N, L, C_in) tokens, in batches, without gradients."""
        assert self.model is not None
        self.model.eval()
        parts = [
            self.model(tokens[i : i + batch_size].to(self.device)) for i in range(0, len(tokens), batch_size)
        ]
        return (
            torch.cat(parts)
            if parts
            else tokens.new_zeros((0, tokens.shape[1], self.signature["out_channels"]))
        )

    def map(self, image_codes: bytes, dtype: str | None = None) -> bytes:
        """Serve one request: image-code message in, mask-code message out (same wire dtype by default)."""
        if self.model is None:
            raise ConfigError("the mapping network is not trained or loaded yet")
        batch = decode_codes(
            image_codes,
            expect_kind="image",
            expect_tokens=(
                self.signature["grid"][0] * self.signature["grid"][1],
                self.signature["in_channels"],
            ),
        )
        if list(batch.grid) != self.signature["grid"]:
            raise WireFormatError(
                f"codes on a {batch.grid[0]}x{batch.grid[1]} token grid reached a mapper trained on "
                f"{self.signature['grid'][0]}x{self.signature['grid'][1]}; encode with the matching codec"
            )
        if batch.scan != self.signature["scan"]:
            raise WireFormatError(
                f"codes in {batch.scan} token order reached a mapper trained on {self.signature['scan']} "
                "order; encode with the same key setting as the training codes"
            )
        out = self.predict_tokens(torch.from_numpy(batch.tokens)).cpu().numpy()
        reply_dtype = dtype or batch.wire_dtype or "float16"
        return encode_codes(CodeBatch(out, batch.grid, "mask", scan=batch.scan), reply_dtype)

    def save(self, path: Path) -> None:
        if self.model is None:
            raise ConfigError("nothing to save: the mapping network is not trained")
        save_checkpoint(path, {"signature": self.signature, "model": self.model.state_dict()})

    def load(self, path: Path, grid: tuple[int, int], in_channels: int, out_channels: int) -> None:
        """Load a saved mapper; the token scan order it was trained on is read from its checkpoint."""
        expected = {"grid": list(grid), "in_channels": in_channels, "out_channels": out_channels}
        state = load_checkpoint(path, {**expected, **asdict(self.mapper_cfg)})
        model = self.initialise(grid, in_channels, out_channels, state["signature"].get("scan", SCAN_ORDER))
        model.load_state_dict(state["model"])
        model.eval()
