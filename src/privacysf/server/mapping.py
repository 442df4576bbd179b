"""The server's side of Privacy-SF: learn image code -> mask code from pairs of codes, then serve it.

:class:`MappingServer` only ever handles wire messages (``bytes``) and token tensors. It is built on
torch and the exchange format alone; nothing here can read an image or a mask, and the tests check
that importing this package loads no such module.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch

from privacysf.common.torchutil import evaluating, load_checkpoint, resolve_device, save_checkpoint
from privacysf.common.training import EpochHook, FitResult, epoch_order, fit
from privacysf.config import AugmentConfig, MapperConfig, TrainConfig, permutation_conflicts
from privacysf.errors import ConfigError, PayloadTooLargeError, WireFormatError
from privacysf.exchange import (
    CodeBatch,
    CodeDataset,
    decode_codes,
    encode_codes,
    one_code_space,
    read_dataset,
)
from privacysf.exchange.encrypted import EncryptedCodes, EvaluationKeys, is_encrypted
from privacysf.exchange.wire import SCAN_ORDER, fits_wire
from privacysf.nets.mappers import build_mapper
from privacysf.nets.onnx_runtime import OnnxRuntimeModule
from privacysf.nets.polynomial import PolynomialMapper
from privacysf.server.augment import augment_pairs, pipeline
from privacysf.server.encrypted import EncryptedMapper

log = logging.getLogger("privacysf.server")


def pooled_part(datasets: list[CodeDataset], part: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Part ``part`` (0-3, as in :data:`~privacysf.exchange.DATASET_PARTS`) of every dataset as one
    tensor of tokens, and the index of the dataset each token sequence came from."""
    batches = [d.parts[part] for d in datasets]
    tokens = torch.from_numpy(np.concatenate([b.tokens for b in batches]))
    centers = torch.cat([torch.full((len(b.tokens),), i) for i, b in enumerate(batches)])
    return tokens, centers


class MappingServer:
    """Trains and serves the mapping network on codes received in the wire format."""

    def __init__(self, mapper: MapperConfig, augment: AugmentConfig, train: TrainConfig) -> None:
        self.mapper_cfg = mapper
        self.augment_cfg = augment
        self.train_cfg = train
        self.device = resolve_device(train.device)
        self.model: torch.nn.Module | None = None
        self.served: OnnxRuntimeModule | None = None
        """The trained model exported to ONNX Runtime, which then answers queries (``mapper.runtime``)."""
        self.signature: dict = {}
        self.centers = 0
        """Centers the mapper tells apart by a learned embedding (0: no embedding, one code space)."""
        self.privacy: dict[str, float] | None = None
        """The (ε, δ) the last DP-SGD training spent, with its settings (None: trained without DP)."""
        self.encrypted: dict[str, EncryptedMapper] = {}
        """The mapper bound to each center's CKKS evaluation keys, by key id (encrypted queries)."""

    def initialise(
        self,
        grid: tuple[int, int],
        in_channels: int,
        out_channels: int,
        scan: str = SCAN_ORDER,
        centers: int = 1,
    ) -> torch.nn.Module:
        """A fresh mapper for codes on ``grid`` with the given values per token and scan order.

        ``centers`` matters only with ``mapper.center_embedding``: the number of code spaces to tell apart.
        """
        if scan != SCAN_ORDER and (problems := permutation_conflicts(self.mapper_cfg, self.augment_cfg)):
            raise ConfigError(f"codes arrive in a secret ({scan}) token order: " + "; ".join(problems))
        self.signature = {
            "role": "server-mapper",
            "grid": list(grid),
            "scan": scan,
            "in_channels": in_channels,
            "out_channels": out_channels,
            **_mapper_settings(self.mapper_cfg),
        }
        self.centers = centers if self.mapper_cfg.center_embedding else 0
        if self.centers:
            self.signature["centers"] = self.centers
        self.model = build_mapper(self.mapper_cfg, grid, in_channels, out_channels, self.centers)
        self.served = None
        self.model.to(self.device)
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

        ``resume`` and ``on_epoch`` are passed to :func:`privacysf.common.training.fit` (restartable jobs).
        """
        return self.fit_pooled(
            [(train_images, train_masks, val_images, val_masks)], checkpoint, resume, on_epoch
        )

    def fit_pooled(
        self,
        uploads: list[tuple[bytes, bytes, bytes, bytes]],
        checkpoint: Path | None = None,
        resume: Path | None = None,
        on_epoch: EpochHook | None = None,
    ) -> FitResult:
        """:meth:`fit` on several centers' uploads (train/val image and mask codes each) at once.

        Center ``i`` is the ``i``-th upload; with ``mapper.center_embedding`` the mapper learns one
        embedding per center and :meth:`map` must then be told which center a request comes from.
        """
        datasets = [read_dataset(upload) for upload in uploads]
        space = one_code_space([d.space for d in datasets], "the centers' uploads")
        grid = space.grid
        model = self.initialise(grid, space.image_channels, space.mask_channels, space.scan, len(datasets))
        device = self.device
        cfg = self.train_cfg.updated(lr=self.mapper_cfg.learning_rate(self.train_cfg.lr))

        (tx, tc), (ty, _), (vtx, vc), (vty, _) = (pooled_part(datasets, part) for part in range(4))
        del datasets  # the pooled tensors hold the codes now: one float32 copy while training, not two
        vtx, vty = vtx.to(device), vty.to(device)
        steps = pipeline(self.augment_cfg)
        g = torch.Generator().manual_seed(cfg.seed)
        private = private_training(self.mapper_cfg, cfg.batch_size, len(tx))

        def orders(epoch: int):
            order = epoch_order(len(tx), cfg.batch_size, cfg.min_steps, cfg.seed + epoch)
            return private.draws(len(order), cfg.seed + epoch) if private else order

        def batches(epoch: int):
            for order in orders(epoch):
                index = torch.from_numpy(order)
                bx, by = augment_pairs(tx[index], ty[index], grid, steps, g)
                # Opacus's per-pair hooks fire on the first layer's input gradient: without one torch
                # warns on every step, so under DP the input asks for it
                yield bx.to(device).requires_grad_(private is not None), by.to(device), tc[index].to(device)

        def step(batch):
            bx, by, bc = batch
            return torch.nn.functional.mse_loss(self._forward(model, bx, bc), by)

        def validate() -> float:
            return -float(torch.nn.functional.mse_loss(self.predict_tokens(vtx, centers=vc), vty))

        per_pair = private.attach(model) if private else None
        try:
            result = fit(
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
                wrap_optimizer=private.wrap if private else None,
            )
        finally:
            if per_pair is not None:
                per_pair.remove_hooks()
        self.privacy = private.spent() if private else None
        self.prepare_for_serving()
        return result

    def prepare_for_serving(self, checkpoint: Path | None = None) -> None:
        """Put the mapper's convolution weights in channels-last layout on the CPU (done after
        :meth:`fit_pooled` and :meth:`load`).

        oneDNN's convolutions then run without reordering every feature map; the grid mapper's map
        took 0.72-0.89 of its time in the default layout (``tools/mapper_latency.py``, one thread).
        The weights' values are unchanged, so checkpoints are too, and answers agree up to float
        rounding. CUDA is left as it is.

        With ``mapper.runtime=onnxruntime`` the model is then exported to ONNX Runtime, which answers
        every query from then on; on CUDA torch answers, and the log says so. A model loaded from a
        ``checkpoint`` keeps its export beside it (same name, ``.onnx``, same permission bits) for the
        next load.
        """
        if self.model is None:
            return
        if self.device.type != "cpu":
            if self.mapper_cfg.runtime == "onnxruntime":
                log.warning(
                    "mapper.runtime=onnxruntime serves on the CPU only; torch answers on %s", self.device
                )
            return
        self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        if self.mapper_cfg.runtime == "onnxruntime":
            grid, channels = self.signature["grid"], self.signature["in_channels"]
            example = torch.zeros(2, grid[0] * grid[1], channels)  # batch 2: 0 and 1 would be fixed
            self.served = OnnxRuntimeModule(self.model.eval(), example, checkpoint=checkpoint)

    def _forward(self, model: torch.nn.Module, tokens: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
        return model(tokens, centers) if self.centers else model(tokens)

    @torch.no_grad()
    def predict_tokens(
        self,
        tokens: torch.Tensor,
        batch_size: int = 64,
        centers: torch.Tensor | None = None,
        deadline: float | None = None,
    ) -> torch.Tensor:
        """Mapped (N, L, C_out) tokens for (N, L, C_in) tokens, in batches, without gradients.

        ``centers`` (N,) says which center each code came from (needed with a center embedding).
        Past ``deadline`` (``time.monotonic()``) the rest is refused with a
        :class:`PayloadTooLargeError` saying how many codes did fit, so one request cannot hold the
        service's worker for longer than the service allows, whatever the model's cost per code.
        """
        assert self.model is not None
        evaluating(self.model)
        if centers is None:
            centers = torch.zeros(len(tokens), dtype=torch.long)
        parts = []
        for i in range(0, len(tokens), batch_size):
            if i and deadline is not None and time.monotonic() > deadline:
                raise PayloadTooLargeError(
                    f"mapping {len(tokens)} codes takes longer than this server allows per request "
                    f"({i} were mapped in time); send at most {i} codes per request"
                )
            batch = tokens[i : i + batch_size].to(self.device)
            if self.served is not None:
                parts.append(self.served(batch))
            else:
                parts.append(self._forward(self.model, batch, centers[i : i + batch_size].to(self.device)))
        return (
            torch.cat(parts)
            if parts
            else tokens.new_zeros((0, tokens.shape[1], self.signature["out_channels"]))
        )

    def map(
        self,
        image_codes: bytes,
        dtype: str | None = None,
        center: int | None = None,
        deadline: float | None = None,
    ) -> bytes:
        """Serve one request: image-code message in, mask-code message out (same wire dtype by default,
        deflated when the query was).

        ``center`` is the requesting center's index when the mapper was trained with a center embedding;
        ``deadline`` bounds the time spent (see :meth:`predict_tokens`).
        """
        if self.model is None:
            raise ConfigError("the mapping network is not trained or loaded yet")
        if is_encrypted(image_codes):
            return self.map_encrypted(image_codes, deadline)
        if self.centers and (center is None or not 0 <= center < self.centers):
            raise ConfigError(
                f"this mapper serves {self.centers} centers; say which one (0..{self.centers - 1})"
            )
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
        centers = torch.full((len(batch.tokens),), center or 0, dtype=torch.long)
        tokens = torch.from_numpy(batch.tokens)
        out = self.predict_tokens(tokens, centers=centers, deadline=deadline).cpu().numpy()
        reply_dtype = dtype or batch.wire_dtype or "float16"
        if not fits_wire(out, reply_dtype):  # finite input far outside [-1, 1] (3e38) can overflow
            raise WireFormatError(
                f"these image codes drive the mapper to NaN or infinite values (as {reply_dtype}); a codec's "
                f"codes lie in [-1, 1], these reach {float(np.abs(batch.tokens).max()):.3g}"
            )
        reply = CodeBatch(out, batch.grid, "mask", scan=batch.scan)
        return encode_codes(reply, reply_dtype, batch.compression)

    def register_keys(self, message: bytes) -> str:
        """Take a center's public CKKS evaluation keys (``PSFK``), so its encrypted queries can be mapped.

        Returns the key id its queries carry. Needs a trained poly mapper: the only kind made of
        operations ciphertexts allow."""
        if not isinstance(self.model, PolynomialMapper):
            raise ConfigError(
                f"encrypted queries need a mapper trained with mapper.kind=poly; this one is "
                f"{self.mapper_cfg.kind}"
            )
        if self.mapper_cfg.padding != "zeros":  # the encrypted convolutions fold in zero padding
            raise ConfigError(
                f"encrypted queries need a poly mapper with zero padding; this one pads "
                f"{self.mapper_cfg.padding}: train one with mapper.padding=zeros"
            )
        keys = EvaluationKeys.decode(message)
        self.encrypted[keys.key_id] = EncryptedMapper(self.model, keys)
        return keys.key_id

    def key_ids(self) -> set[str]:
        """Ids of the centers' evaluation keys this mapper holds."""
        return set(self.encrypted)

    def map_encrypted(self, message: bytes, deadline: float | None = None) -> bytes:
        """Encrypted image codes in, encrypted mask codes out, under keys :meth:`register_keys` took;
        ``deadline`` as for :meth:`predict_tokens`, checked between codes."""
        query = EncryptedCodes.decode(message, expect_kind="image")
        if query.key_id not in self.encrypted:
            raise ConfigError(
                f"no evaluation keys for CKKS key {query.key_id}; the center must register its keys first"
            )
        return self.encrypted[query.key_id].map(query, deadline).encode()

    def save(self, path: Path) -> None:
        if self.model is None:
            raise ConfigError("nothing to save: the mapping network is not trained")
        save_checkpoint(path, {"signature": self.signature, "model": self.model.state_dict()})

    def load(self, path: Path, grid: tuple[int, int], in_channels: int, out_channels: int) -> None:
        """Load a saved mapper; the token scan order it was trained on is read from its checkpoint.

        Served by ONNX Runtime, its export is kept beside the checkpoint (``.onnx``) for the next load."""
        expected = {"grid": list(grid), "in_channels": in_channels, "out_channels": out_channels}
        state = load_checkpoint(path, {**expected, **_mapper_settings(self.mapper_cfg)})
        signature = state["signature"]
        model = self.initialise(
            grid, in_channels, out_channels, signature.get("scan", SCAN_ORDER), signature.get("centers", 1)
        )
        model.load_state_dict(state["model"])
        model.eval()
        self.prepare_for_serving(checkpoint=path)


def private_training(cfg: MapperConfig, batch_size: int, pairs: int):
    """DP-SGD for this training when ``mapper.dp_noise`` > 0, else None.

    Opacus is imported here, not with the module: it needs SciPy, which a server installed without
    the ``dp`` extra does not hold (the server install stays free of scientific image stacks)."""
    if cfg.dp_noise <= 0:
        return None
    try:
        from privacysf.server.private_training import PrivateTraining
    except ImportError:
        raise ConfigError(
            "mapper.dp_noise needs Opacus, which this install lacks: pip install 'privacysf[dp]'"
        ) from None
    return PrivateTraining.from_config(cfg, batch_size, pairs)


def _mapper_settings(cfg: MapperConfig) -> dict:
    """The mapper settings a checkpoint records; the center embedding only when on, the unet's
    fields only for the unet and the transformer's slots and token width only when it pools, so
    checkpoints made before those options existed still load."""
    settings = cfg.model_dump()
    for how_trained in ("lr", "dp_noise", "dp_clip", "dp_delta", "runtime"):  # not what shape it has
        del settings[how_trained]
    if not cfg.center_embedding:
        del settings["center_embedding"]
    if cfg.kind != "unet":
        del settings["grid_channels"], settings["res_units"]
    if cfg.kind != "poly":
        del settings["poly_width"]
    # None where a checkpoint made before the option would have no key (a missing key reads as None):
    # a full-attention transformer and every other kind; a pooled checkpoint names its slots and is
    # refused by a run with full attention, and the reverse
    if cfg.kind != "transformer" or not cfg.latents:
        settings["latents"] = None
    # the width the tokens get, None where they are as wide as the slots (all there was before)
    same = settings["latents"] is None or cfg.token_channels == cfg.width
    settings["token_width"] = None if same else cfg.token_channels
    # None for the defaults, all there was before these options: older checkpoints, which lack the
    # key, match them, and a checkpoint with another value is refused by a run with the default
    if cfg.padding == "zeros":
        settings["padding"] = None
    if cfg.kind not in ("unet", "cnn"):  # the only kinds it shapes
        del settings["activation"]
    elif cfg.activation == "gelu":
        settings["activation"] = None
    return settings
