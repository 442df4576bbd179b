"""The center side of the multi-center Flower app (``privacysf.center.federation:app``).

A center is a Flower SuperNode. Which center it is comes from its node config: ``partition-id`` picks
its share of the run's data (``privacysf.data.centers``); ``center-dir`` is its private folder
(default: ``<run-dir>/centers/<partition-id>``), where its codecs, key and predictions stay. Each
handler answers one action of :mod:`privacysf.exchange.flower`; what it sends back is only ever
codes, weights of a network being federated (the shared codecs only masked, with the federation
secret of :mod:`privacysf.center.aggregation`), and scalar metrics.
"""

from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch import nn

from privacysf.center.aggregation import FederationSecret, mask_weights, unmask
from privacysf.center.codecs import (
    MaskCodec,
    build_image_encoder,
    codec_signature,
    token_grid,
    train_mask_codec,
)
from privacysf.center.image_encoder import train_image_encoder
from privacysf.center.norm_statistics import load_shared_state, recalibrate_norms, shared_state
from privacysf.center.pipeline import (
    IMAGE_ENCODER,
    MASK_CODEC,
    Center,
    draw_encryption,
    draw_key,
    load_center,
    train_center,
    upload_messages,
)
from privacysf.common.torchutil import (
    apply_in_batches,
    load_checkpoint,
    resolve_device,
    save_checkpoint,
    seed_everything,
)
from privacysf.config import ExperimentConfig
from privacysf.data.centers import CenterData, prepare_centers
from privacysf.errors import FederationError
from privacysf.exchange import flower
from privacysf.metrics.evaluation import score_test
from privacysf.nets.unet import build_unet, predict_labels, train_unet

LOCAL_PARTS = Path("fedavg") / "image_encoder_parts.pt"
"""The image-encoder mode's own parts (image decoder, attacker, mask-code head) between FedAvg rounds:
kept in the center's folder, never sent."""


@dataclass
class Site:
    """One center as its SuperNode sees it: its config, data and private folder."""

    index: int
    cfg: ExperimentConfig
    center: CenterData
    folder: Path
    device: torch.device

    @property
    def classes(self) -> int:
        return self.center.data.info.num_classes


@functools.lru_cache(maxsize=4)
def _site(config_json: str, index: int, folder: str) -> Site:
    cfg = ExperimentConfig.from_dict(json.loads(config_json))
    seed_everything(cfg.train.seed, cfg.train.threads)
    centers = prepare_centers(cfg.data, cfg.federation)
    return Site(index, cfg, centers[index], Path(folder), resolve_device(cfg.train.device))


def site(settings: Mapping[str, Any], node_config: Mapping[str, Any]) -> Site:
    """The center this node is, prepared once per process (data loading is the slow part)."""
    index = int(node_config["partition-id"])
    default = Path(str(settings["run-dir"])) / "centers" / str(index)
    return _site(str(settings["config"]), index, str(node_config.get("center-dir", default)))


def round_config(cfg: ExperimentConfig, task: ConfigRecord) -> ExperimentConfig:
    """Settings of one federated round: ``local_epochs`` epochs at the round's point of a cosine decay.

    Each round restarts the training loop, so the learning-rate schedule across rounds is set here; the
    seed moves with the round so batches are not drawn in the same order every round.
    """
    rounds, current = cfg.federation.rounds, flower.field(task, "round", int)
    lr = cfg.train.lr * 0.5 * (1 + math.cos(math.pi * (current - 1) / rounds))
    return cfg.override(
        [
            f"train.epochs={cfg.federation.local_epochs}",
            f"train.patience={cfg.federation.local_epochs}",
            f"train.lr={lr}",
            f"train.seed={cfg.train.seed + current}",
        ]
    )


def reply(message: Message, started: float, examples: int, **records) -> Message:
    metrics = MetricRecord({"num-examples": examples, "seconds": time.perf_counter() - started})
    return Message(RecordDict({"metrics": metrics, **records}), reply_to=message)


def initial_weights(message: Message) -> dict | None:
    """The U-Net's averaged weights the server sent in the clear, or None in round 1 (every center then
    starts from the seed)."""
    record = message.content.array_records.get("weights")
    return flower.record_weights(record) if record is not None and len(record) else None


def shared_weights(message: Message, s: Site, name: str = "weights") -> dict | None:
    """The average behind the masked sum the server sent as ``name`` (None in round 1), unmasked with
    the federation secret (``federation.secret_file``)."""
    secret = FederationSecret.load(s.cfg.federation)
    return unmask(message.content, name, secret, message.metadata.run_id)


def masked_reply(message: Message, started: float, s: Site, state: dict, score: float) -> Message:
    """A masked round's reply: this center's weights masked for the server to add, its slices in clear."""
    examples = len(s.center.data.train)
    task = message.content.config_records["task"]
    secret = FederationSecret.load(s.cfg.federation)
    upload = mask_weights({"model": state}, examples, task, secret, message.metadata.run_id)
    response = reply(message, started, examples, **upload)
    response.content.metric_records["metrics"]["val-score"] = score
    return response


def codes_record(center: Center, s: Site) -> ConfigRecord:
    """The center's code bundle: train/val image and mask codes, test image codes (no test masks).

    A center that encrypts its queries sends its test codes as ciphertexts, with the public evaluation
    keys the server maps them with; its training codes go as plain codes, as in ``fit``."""
    data = s.center.data
    messages = dict(zip(flower.UPLOAD_PARTS, upload_messages(center, data.train, data.val), strict=True))
    if center.encryption is None:
        return ConfigRecord({**messages, flower.TEST_IMAGES: center.image_message(data.test.images)})
    return ConfigRecord(
        {
            **messages,
            flower.TEST_QUERIES: center.query_message(data.test.images),
            flower.EVALUATION_KEYS: center.encryption.evaluation_keys().encode(),
        }
    )


def hello(message: Message, s: Site) -> Message:
    data = s.center.data
    info = ConfigRecord(
        {"index": s.index, "name": s.center.name, **{k: len(v) for k, v in data.splits().items()}}
    )
    return Message(RecordDict({"center": info}), reply_to=message)


def local_codes(message: Message, s: Site) -> Message:
    started = time.perf_counter()
    data = s.center.data
    seed_everything(s.cfg.train.seed, s.cfg.train.threads)
    center, _ = train_center(s.cfg, data.train, data.val, s.classes, s.device, s.folder / flower.LOCAL)
    return reply(message, started, len(data.train), codes=codes_record(center, s))


def mask_codec_round(message: Message, s: Site) -> Message:
    started = time.perf_counter()
    cfg = round_config(s.cfg, message.content.config_records["task"])
    torch.manual_seed(s.cfg.train.seed)  # round 1: every center starts from the same weights
    data = s.center.data
    codec, result = train_mask_codec(
        cfg, data.train, data.val, s.classes, s.device, None, shared_weights(message, s)
    )
    return masked_reply(message, started, s, shared_state(codec), result.best_score)


def _final_weights(message: Message, s: Site, name: str) -> dict[str, torch.Tensor]:
    """The averaged weights of a finished masked FedAvg (``mask_codec`` or ``image_encoder``)."""
    weights = shared_weights(message, s, name)
    if weights is None:
        raise FederationError(f"{message.metadata.message_type} carries no masked {name} sum")
    return weights["model"]


def _shared_codec(message: Message, s: Site) -> MaskCodec:
    """The averaged mask codec the server sent with an image-encoder or shared-codes message, with
    batch-norm statistics of this center's training masks (only weights are averaged)."""
    codec = MaskCodec(s.classes, s.cfg.codec)
    load_shared_state(codec, _final_weights(message, s, "mask_codec")).to(s.device)
    masks = s.center.data.train.masks
    recalibrate_norms(
        codec, lambda: apply_in_batches(lambda y: codec.decode(codec.encode(y)), masks, s.device)
    )
    return codec


def _shared_encoder(message: Message, s: Site) -> nn.Module:
    """The averaged image encoder, with batch-norm statistics of this center's training images."""
    encoder = load_shared_state(build_image_encoder(s.cfg.codec), _final_weights(message, s, "image_encoder"))
    images = s.center.data.train.images
    return recalibrate_norms(encoder.to(s.device), lambda: apply_in_batches(encoder, images, s.device))


def image_encoder_round(message: Message, s: Site) -> Message:
    started = time.perf_counter()
    cfg = round_config(s.cfg, message.content.config_records["task"])
    torch.manual_seed(s.cfg.train.seed + 1)
    data = s.center.data
    averaged = shared_weights(message, s)
    # round 1 starts every part from the seed; later rounds start the encoder from the server's average
    # and the mode's own parts (decoder, attacker, head) from this center's last round
    initial = (
        {**averaged, **load_checkpoint(s.folder / LOCAL_PARTS, _signature(s, "image-parts"))}
        if averaged
        else None
    )
    encoder, result, parts = train_image_encoder(
        cfg, data.train, data.val, _shared_codec(message, s), s.device, None, initial
    )
    save_checkpoint(
        s.folder / LOCAL_PARTS,
        {"signature": _signature(s, "image-parts"), **{k: m.state_dict() for k, m in parts.items()}},
    )
    # only the encoder is averaged: an image decoder or attacker decoder never leaves the center
    return masked_reply(message, started, s, shared_state(encoder), result.best_score)


def shared_codes(message: Message, s: Site) -> Message:
    """Keep the averaged codecs in the center's folder (with its own key) and send codes made with them."""
    started = time.perf_counter()
    folder = s.folder / flower.SHARED
    codec = _shared_codec(message, s)
    encoder = _shared_encoder(message, s)
    save_checkpoint(
        folder / MASK_CODEC, {"signature": _signature(s, "mask-codec"), "model": codec.state_dict()}
    )
    save_checkpoint(
        folder / IMAGE_ENCODER, {"signature": _signature(s, "image-encoder"), "model": encoder.state_dict()}
    )
    draw_key(s.cfg, folder)  # the center's own keys, never sent: loaded back with the codecs
    draw_encryption(s.cfg, token_grid(s.cfg.data.size, s.cfg.codec), folder)
    center = load_center(s.cfg, s.classes, folder, s.device)
    return reply(message, started, len(s.center.data.train), codes=codes_record(center, s))


def _signature(s: Site, part: str) -> dict:
    return codec_signature(s.cfg, s.classes, part)


def save_prediction(s: Site, mode: str, pred: np.ndarray) -> None:
    """Test predictions stay in the center's folder (for its own overlay pictures)."""
    folder = s.folder / "predictions"
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / f"{mode}.npy", pred)


def evaluate_codes(message: Message, s: Site) -> Message:
    """Decode the mapped test codes of every mode with this center's codecs; score; keep predictions."""
    started = time.perf_counter()
    codecs = flower.field(message.content.config_records["task"], "codecs", str)
    center = load_center(s.cfg, s.classes, s.folder / codecs, s.device).serving()
    scores = {}
    codes = message.content.config_records["codes"]
    for mode in codes:
        pred = center.decode_message(flower.field(codes, mode, bytes))
        save_prediction(s, mode, pred)
        scores[mode] = json.dumps(score_test(pred, s.center.data))
    return reply(message, started, len(s.center.data.test), scores=flower.config_record(scores))


def unet_round(message: Message, s: Site) -> Message:
    started = time.perf_counter()
    cfg = round_config(s.cfg, message.content.config_records["task"])
    torch.manual_seed(s.cfg.train.seed)
    model, result = train_unet(cfg, s.center.data, s.device, None, initial_weights(message))
    response = reply(
        message,
        started,
        len(s.center.data.train),
        weights=flower.weights_record({"model": model.state_dict()}),
    )
    response.content.metric_records["metrics"]["val-score"] = result.best_score
    return response


def evaluate_unet(message: Message, s: Site) -> Message:
    started = time.perf_counter()
    model = build_unet(s.cfg.unet, s.classes)
    weights = initial_weights(message)
    if weights is None:
        raise FederationError("evaluate.unet carries no U-Net weights")
    model.load_state_dict(weights["model"])
    pred = predict_labels(model.to(s.device), s.center.data.test.images, s.device)
    save_prediction(s, "unet-fedavg", pred)
    scores = flower.config_record({"unet-fedavg": json.dumps(score_test(pred, s.center.data))})
    return reply(message, started, len(s.center.data.test), scores=scores)


HANDLERS: dict[str, Callable[[Message, Site], Message]] = {
    flower.HELLO: hello,
    flower.LOCAL_CODES: local_codes,
    flower.MASK_CODEC_ROUND: mask_codec_round,
    flower.IMAGE_ENCODER_ROUND: image_encoder_round,
    flower.SHARED_CODES: shared_codes,
    flower.EVALUATE_CODES: evaluate_codes,
    flower.UNET_ROUND: unet_round,
    flower.EVALUATE_UNET: evaluate_unet,
}


def _handle(
    handler: Callable[[Message, Site], Message],
    settings: Mapping[str, Any] | None,
    message: Message,
    context: Context,
) -> Message:
    return handler(message, site(settings or context.run_config, context.node_config))


def make_app(settings: Mapping[str, Any] | None = None) -> ClientApp:
    """The center's ClientApp. ``settings`` (the run config: ``config``, ``run-dir``) is given directly
    in a simulation; deployed SuperNodes read it from the run's config instead."""
    client = ClientApp()
    for action, handler in HANDLERS.items():
        kind, _, name = action.partition(".")
        getattr(client, kind)(name)(functools.partial(_handle, handler, settings))
    return client


app = make_app()
"""What a deployed SuperNode runs (``clientapp`` component of the Flower app's pyproject.toml)."""
