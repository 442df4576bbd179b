"""``privacysf fit`` / ``demo``: the whole Privacy-SF experiment on one dataset, with its report.

Trains the center's codecs, lets the server learn the mapping from codes, scores the test split
through encode -> map -> decode, trains the raw U-Net on the same split and budget for comparison,
and writes a run folder with config, metrics, figures and a Markdown report.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from privacysf.center.pipeline import Center, load_center, train_center
from privacysf.common.figures import curves
from privacysf.common.runs import write_json
from privacysf.common.torchutil import resolve_device, seed_everything
from privacysf.config import ExperimentConfig, MapperRuntime
from privacysf.data.prepare import PreparedData
from privacysf.errors import ConfigError
from privacysf.exchange import WIRE_DTYPES
from privacysf.metrics.evaluation import save_test_overlays, score_test
from privacysf.metrics.segmentation import Summary
from privacysf.nets.unet import predict_labels, train_unet
from privacysf.server import MappingServer
from privacysf.workflows.fit_report import save_code_pictures, write_report
from privacysf.workflows.inprocess import fit_server, load_server, payload_bytes
from privacysf.workflows.session import open_run


def run_fit(cfg: ExperimentConfig) -> tuple[Path, dict]:
    session = open_run(cfg, f"privacysf-{cfg.codec.image_mode}")
    device, data, run_dir = session.device, session.data, session.run_dir
    k = data.info.num_classes

    started = time.perf_counter()
    center, center_fits = train_center(cfg, data.train, data.val, k, device, run_dir)
    center_seconds = time.perf_counter() - started
    server, server_fit, upload = fit_server(cfg, center, data.train, data.val, run_dir)
    served = center.serving()  # scored as `privacysf segment` will run it
    plain_center = dataclasses.replace(served, encryption=None)
    pred = plain_center.segment(server, data.test.images)
    payload = payload_bytes(served, server, data.test.images)
    encrypted = None
    if served.encryption:  # the headline is then the encrypted queries' result
        pred, encrypted = encrypted_queries(served, server, data, pred)
    ceiling_scores = {dtype: ceiling_by_class(served, data, dtype) for dtype in WIRE_DTYPES}
    ceilings = {dtype: scored["mean"]["dice"]["mean"] for dtype, scored in ceiling_scores.items()}
    metrics: dict = {
        "dataset": data.info.name,
        "split": data.split,
        "privacysf": {
            "mode": cfg.codec.image_mode,
            "test": score_test(pred, data),
            "mask_codec_ceiling_dice": ceilings[cfg.codec.wire_dtype],
            "mask_codec_ceiling_by_wire_dtype": ceilings,
            "mask_codec_ceiling_scores_by_wire_dtype": ceiling_scores,
            "mask_codec_empty_guard": center_fits["empty_mask_guard"],
            "payload_bytes_per_query": payload,
            **({"encrypted_queries": encrypted} if encrypted else {}),
            **({"mapper_dp": server.privacy} if server.privacy else {}),
            "raw_image_bytes": data.raw_image_bytes,
            "raw_image_dtype": data.info.stored_dtype,
            "wire_dtype": cfg.codec.wire_dtype,
            "upload": upload,
            "training_seconds": {
                "mask_codec": round(center_fits["mask_codec"].seconds, 2),
                "image_encoder": round(center_fits["image_encoder"].seconds, 2),
                "center_total": round(center_seconds, 2),
                "server_mapper": round(server_fit.seconds, 2),
            },
            "training_cost": {
                "mask_codec": center_fits["mask_codec"].cost(),
                "image_encoder": center_fits["image_encoder"].cost(),
                "server_mapper": server_fit.cost(),
            },
            "training": {
                "mask_codec": center_fits["mask_codec"].outcome(),
                "image_encoder": center_fits["image_encoder"].outcome(),
                "server_mapper": server_fit.outcome(),
            },
        },
    }
    histories = {
        "mask codec": center_fits["mask_codec"].history,
        f"image encoder ({cfg.codec.image_mode})": center_fits["image_encoder"].history,
        "server mapper (-MSE)": server_fit.history,
    }
    predictions = {"Privacy-SF (encrypted queries)" if encrypted else "Privacy-SF": pred}
    if cfg.compare_unet:
        seed_everything(cfg.train.seed, cfg.train.threads)  # same start as `privacysf baseline train`
        unet, unet_fit = train_unet(cfg, data, device, run_dir / "baseline" / "unet.pt")
        unet_pred = predict_labels(unet, data.test.images, device)
        metrics["raw_unet"] = {
            "test": score_test(unet_pred, data),
            "training_seconds": round(unet_fit.seconds, 2),
            "training_cost": unet_fit.cost(),
            "training": unet_fit.outcome(),
        }
        unet_dice = metrics["raw_unet"]["test"]["mean"]["dice"]["mean"]
        # undefined (null) where the U-Net scored 0: no ratio says how far ahead a working method is
        metrics["dice_ratio_vs_unet"] = (
            metrics["privacysf"]["test"]["mean"]["dice"]["mean"] / unet_dice if unet_dice > 0 else None
        )
        histories["raw U-Net"] = unet_fit.history
        predictions["raw U-Net"] = unet_pred
    write_json(run_dir / "metrics.json", metrics)
    write_json(run_dir / "history.json", histories)
    figures = run_dir / "figures"
    save_test_overlays(figures / "overlays.png", data, predictions)
    curves(figures / "curves.png", histories)
    save_code_pictures(figures / "codes.png", center, data)
    write_report(run_dir, cfg, metrics)
    return run_dir, metrics


def encrypted_queries(
    center: Center, server: MappingServer, data: PreparedData, plain: np.ndarray
) -> tuple[np.ndarray, dict]:
    """The test split through encrypted queries, one image each: their predictions, and their Dice
    beside the same mapper's on plain codes (``plain``), with time and bytes per query.

    The server takes the center's public evaluation keys first (their size and making time are
    reported); its view of every query is ciphertext."""
    assert center.encryption is not None
    started = time.perf_counter()
    keys = center.encryption.evaluation_keys().encode()
    server.register_keys(keys)
    keys_seconds = time.perf_counter() - started
    started = time.perf_counter()
    pred = center.segment(server, data.test.images)
    seconds = (time.perf_counter() - started) / len(data.test.images)
    up = center.query_message(data.test.images[:1])
    down = server.map(up)
    return pred, {
        "plaintext_test_dice": score_test(plain, data)["mean"]["dice"]["mean"],
        "test_dice": score_test(pred, data)["mean"]["dice"]["mean"],
        "labels_differing_from_plaintext": float(np.mean(pred != plain)),
        "seconds_per_query": round(seconds, 3),
        "queries": len(data.test.images),
        "bytes_per_query": {"up": len(up), "down": len(down), "total": len(up) + len(down)},
        "evaluation_key_bytes": len(keys),
        "evaluation_key_seconds": round(keys_seconds, 2),
        "ckks": center.encryption.params.to_dict(),
    }


def ceiling_by_class(center: Center, data: PreparedData, dtype: str) -> Summary:
    """The mask-codec ceiling (true test masks through the codec and the wire in ``dtype``), scored as
    the test predictions are: per class, empty-mask rule and foreground-only, absent classes flagged,
    and per case in 3-D, so a method's 3-D Dice stands beside the best it could reach."""
    return score_test(center.decode_message(center.mask_message(data.test.masks, dtype)), data)


def reload_center(run_dir: Path, device_name: str | None = None) -> tuple[ExperimentConfig, Center]:
    """The center's own models of a finished run, with its config (the server's mapper not loaded), as
    served: inference copies of its networks (:meth:`Center.serving`)."""
    cfg = _run_config(run_dir, [f"train.device={device_name}"] if device_name else [])
    data_path = run_dir / "data.json"
    if not data_path.is_file():
        raise ConfigError(f"{run_dir} has no data.json; it is not a complete Privacy-SF run folder")
    num_classes = len(json.loads(data_path.read_text())["classes"])
    return cfg, load_center(cfg, num_classes, run_dir, resolve_device(cfg.train.device)).serving()


def reload_server(run_dir: Path, runtime: MapperRuntime, device_name: str | None = None) -> MappingServer:
    """A finished run's mapper answering in ``runtime`` whatever the run was fitted with (``privacysf
    segment --mapper-runtime``); ONNX Runtime answers on the CPU only, so on CUDA torch does."""
    device = [f"train.device={device_name}"] if device_name else []
    return load_server(_run_config(run_dir, [f"mapper.runtime={runtime}", *device]), run_dir)


def _run_config(run_dir: Path, overrides: list[str]) -> ExperimentConfig:
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise ConfigError(f"{run_dir} is not a Privacy-SF run folder (no config.json)")
    return ExperimentConfig.load_run(config_path).override(overrides)


def reload(run_dir: Path, device_name: str | None = None):
    """The center and server of a finished run, with its config."""
    cfg, center = reload_center(run_dir, device_name)
    return cfg, center, load_server(cfg, run_dir)
