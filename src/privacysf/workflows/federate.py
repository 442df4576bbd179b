"""``privacysf federate``: every multi-center mode on the same per-center test sets, in one run folder.

The Flower app (``privacysf.server.federation`` + ``privacysf.center.federation``) runs the modes that
involve a server: Privacy-SF per center, pooled (with and without a center embedding), with
federated-averaged codecs, and the federated raw U-Net. It runs either as a Flower simulation on this
machine or on a running SuperLink with one SuperNode per center (``flwr run``). The pooled raw U-Net
needs every center's images in one place, so it is trained here, in-process, as the privacy-agnostic
upper bound; it never runs through the app.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import tomli_w

from privacysf.center.aggregation import FederationSecret, secret_path
from privacysf.common.figures import dice_bars, overlay_grid, pick_rows
from privacysf.common.markdown import Markdown
from privacysf.common.runs import new_run_dir, write_json
from privacysf.common.torchutil import resolve_device, seed_everything
from privacysf.config import ExperimentConfig
from privacysf.data.centers import CenterData, prepare_centers
from privacysf.data.prepare import PreparedData, describe
from privacysf.data.preprocess import SliceSet
from privacysf.errors import ConfigError, PrivacySFError
from privacysf.exchange import flower
from privacysf.metrics.evaluation import score_test
from privacysf.metrics.segmentation import Summary
from privacysf.nets.unet import predict_labels, train_unet

MODE_LABELS = {
    "alone": "Privacy-SF, each center alone",
    "pooled": "Privacy-SF pooled (center embedding)",
    "pooled-noembed": "Privacy-SF pooled (no embedding)",
    "fedavg-codecs": "Privacy-SF, FedAvg codecs",
    "unet-fedavg": "raw U-Net, FedAvg",
    "unet-pooled": "raw U-Net pooled (upper bound)",
}
APP_DIR = "flower_app"
"""Folder (inside the package) holding the Flower app's pyproject.toml for ``flwr run``."""


def app_dir() -> Path:
    return Path(str(resources.files("privacysf") / APP_DIR))


def run_settings(cfg: ExperimentConfig, run_dir: Path, centers: int) -> dict[str, str | int]:
    """The Flower run config both apps read: the whole ExperimentConfig, the run folder, center count."""
    return {"config": json.dumps(cfg.to_dict()), "run-dir": str(run_dir.resolve()), "num-centers": centers}


def simulate(settings: dict, centers: int) -> None:
    """Run the app in Flower's simulation runtime (one virtual SuperNode per center).

    Centers run one at a time (one Ray CPU), which keeps a shared machine usable; each round's wall time
    is then the sum of the centers' times.
    """
    from flwr.simulation import run_simulation

    from privacysf.center.federation import make_app as make_client_app
    from privacysf.server.federation import make_app as make_server_app

    backend: dict[str, Any] = {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {"num_cpus": 1, "include_dashboard": False, "log_to_driver": True},
    }
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # no GPUs are asked for; keep Ray quiet
    run_simulation(make_server_app(settings), make_client_app(settings), centers, backend_config=backend)


def deploy(settings: dict, superlink: str, flwr_home: Path) -> None:
    """Submit the app to a running SuperLink (its address, ``host:port``) and follow it to the end.

    A run the server app stopped itself (a dropout with ``on_dropout=fail``) has left its reason in
    ``server/status.json``; only a run that never got that far is an error here.
    """
    flwr_home.mkdir(parents=True, exist_ok=True)
    (flwr_home / "config.toml").write_text(
        '[superlink]\ndefault = "privacysf"\n\n'
        f'[superlink.privacysf]\naddress = "{superlink}"\ninsecure = true\n'
    )
    overrides = flwr_home / "run-config.toml"  # a file: the config JSON holds spaces and quotes
    overrides.write_text(tomli_w.dumps(settings))
    bin_dir = Path(sys.executable).parent
    command = [str(bin_dir / "flwr"), "run", str(app_dir()), "privacysf", "--stream"]
    env = {
        **os.environ,
        "FLWR_HOME": str(flwr_home),
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    done = subprocess.run([*command, "--run-config", str(overrides)], env=env, check=False)
    if done.returncode and not (Path(str(settings["run-dir"])) / "server" / "status.json").is_file():
        raise PrivacySFError(f"flwr run exited with status {done.returncode}; see the SuperLink's log")


def pooled_unet(cfg: ExperimentConfig, centers: list[CenterData], run_dir: Path) -> dict[str, Summary]:
    """The raw U-Net on every center's training slices at once (needs pooled images: upper bound only)."""
    size = cfg.data.size
    pooled = PreparedData(
        centers[0].data.info,
        SliceSet.concatenate([c.data.train for c in centers], size),
        SliceSet.concatenate([c.data.val for c in centers], size),
        SliceSet.concatenate([], size),
    )
    device = resolve_device(cfg.train.device)
    seed_everything(cfg.train.seed, cfg.train.threads)
    model, _ = train_unet(cfg, pooled, device, run_dir / "baseline" / "unet-pooled.pt")
    scores = {}
    for c in centers:
        pred = predict_labels(model, c.data.test.images, device)
        np.save(_predictions(run_dir, c, centers) / "unet-pooled.npy", pred)
        scores[c.name] = score_test(pred, c.data)
    return scores


def _predictions(run_dir: Path, center: CenterData, centers: list[CenterData]) -> Path:
    folder = run_dir / "centers" / str(centers.index(center)) / "predictions"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def dice_table(results: dict[str, dict[str, dict]], centers: list[str]) -> dict[str, dict[str, float]]:
    """Mean test Dice per mode and center, plus the mean over centers."""
    table = {}
    for mode, per_center in results.items():
        row = {c: per_center[c]["mean"]["dice"]["mean"] for c in centers if c in per_center}
        if row:
            row["mean"] = float(np.mean(list(row.values())))
        table[mode] = row
    return table


def traffic_summary(traffic: list[dict]) -> dict[str, dict]:
    """Per phase: rounds, mean bytes down/up per center per round, mean wall time per round."""
    phases: dict[str, dict] = {}
    for entry in traffic:
        phase = phases.setdefault(entry["phase"], {"rounds": 0, "seconds": [], "down": [], "up": []})
        phase["rounds"] += 1
        phase["seconds"].append(entry["seconds"])
        for values in entry["centers"].values():
            phase["down"].append(values["bytes_down"])
            phase["up"].append(values["bytes_up"])
    return {
        name: {
            "rounds": p["rounds"],
            "bytes_down_per_center_per_round": int(np.mean(p["down"])) if p["down"] else 0,
            "bytes_up_per_center_per_round": int(np.mean(p["up"])) if p["up"] else 0,
            "seconds_per_round": round(float(np.mean(p["seconds"])), 2),
        }
        for name, p in phases.items()
    }


def targets(table: dict[str, dict[str, float]], centers: list[str]) -> dict[str, float | bool]:
    """The issue's targets: pooled Privacy-SF above each center alone on its own test set, and its
    mean Dice as a fraction of the pooled raw U-Net's (target >= 0.95)."""
    pooled, alone, unet = table.get("pooled", {}), table.get("alone", {}), table.get("unet-pooled", {})
    out: dict[str, float | bool] = {}
    if pooled and alone and all(c in pooled and c in alone for c in centers):
        out["pooled_beats_alone_at_every_center"] = all(pooled[c] > alone[c] for c in centers)
    if pooled.get("mean") is not None and unet.get("mean"):
        out["pooled_over_unet_pooled"] = round(pooled["mean"] / unet["mean"], 4)
    return out


def run_federate(cfg: ExperimentConfig, superlink: str | None = None) -> tuple[Path, dict]:
    """All configured modes; the Flower part in simulation, or on ``superlink`` when given."""
    flower.check_settings(cfg)
    if "fedavg-codecs" in cfg.federation.modes:  # refuse before any center trains
        secret_path(cfg.federation)
        if not superlink:  # in simulation the centers read the secret on this machine: check it now
            FederationSecret.load(cfg.federation)
    seed_everything(cfg.train.seed, cfg.train.threads)
    centers = prepare_centers(cfg.data, cfg.federation)
    names = [c.name for c in centers]
    run_dir = new_run_dir(cfg.output_dir, f"federate-{Path(cfg.data.dataset).name}")
    cfg.save(run_dir / "config.json")
    write_json(run_dir / "data.json", {c.name: describe(c.data) for c in centers})
    settings = run_settings(cfg, run_dir, len(centers))
    started = time.perf_counter()
    if any(m != "unet-pooled" for m in cfg.federation.modes):
        if superlink:
            deploy(settings, superlink, run_dir / "flwr-home")
        else:
            simulate(settings, len(centers))
    app_seconds = time.perf_counter() - started
    status = _read_status(run_dir)
    results = status.get("results", {})
    if "unet-pooled" in cfg.federation.modes:
        results["unet-pooled"] = pooled_unet(cfg, centers, run_dir)
    metrics = {
        "dataset": cfg.data.dataset,
        "centers": names,
        "engine": f"flower deployment ({superlink})" if superlink else "flower simulation",
        "status": status.get("status", "finished"),
        "error": status.get("error"),
        "dropped": status.get("dropped", []),
        "dice": dice_table(results, names),
        "targets": targets(dice_table(results, names), names),
        "traffic": traffic_summary(status.get("traffic", [])),
        "traffic_per_round": status.get("traffic", []),
        "flower_seconds": round(app_seconds, 1),
        "test": results,
    }
    write_json(run_dir / "metrics.json", metrics)
    figures = run_dir / "figures"
    dice_bars(figures / "dice_per_center.png", metrics["dice"], names, MODE_LABELS)
    for i, c in enumerate(centers):
        _center_overlays(figures / f"overlays-{c.name}.png", run_dir / "centers" / str(i) / "predictions", c)
    (run_dir / "report.md").write_text(report(cfg, metrics))
    if metrics["status"] != "finished":
        raise PrivacySFError(
            f"the multi-center run did not finish: {metrics['error']} (run folder {run_dir})"
        )
    return run_dir, metrics


def _read_status(run_dir: Path) -> dict:
    path = run_dir / "server" / "status.json"
    if not path.is_file():
        raise ConfigError(f"the Flower app wrote no {path}; it did not start (see the log above)")
    return json.loads(path.read_text())


def _center_overlays(path: Path, folder: Path, center: CenterData) -> None:
    """image | truth | every mode's prediction, on this center's test slices (the center's own picture)."""
    predictions = {p.stem: np.load(p) for p in sorted(folder.glob("*.npy"))} if folder.is_dir() else {}
    if not predictions:
        return
    test = center.data.test
    rows = pick_rows(test.masks, 4)
    overlay_grid(
        path,
        test.images[rows, 0],
        {"truth": test.masks[rows], **{k: v[rows] for k, v in predictions.items()}},
        center.data.info.num_classes,
        center.data.info.display_rotations,
    )


def dice_section(dice: dict[str, dict[str, float]], centers: list[str], digits: int = 3) -> Markdown:
    """Mean test Dice of every mode (rows) at each center, and their mean over centers."""
    rows = [
        [MODE_LABELS.get(mode, mode), *(row.get(c) for c in [*centers, "mean"])] for mode, row in dice.items()
    ]
    return Markdown().table(["mode", *centers, "mean"], rows, ["", *[f".{digits}f"] * (len(centers) + 1)])


def report(cfg: ExperimentConfig, metrics: dict) -> str:
    """Markdown: per-center test Dice of every mode, then bytes and time per round of each phase."""
    traffic = [
        [
            phase,
            t["rounds"],
            t["bytes_down_per_center_per_round"],
            t["bytes_up_per_center_per_round"],
            t["seconds_per_round"],
        ]
        for phase, t in metrics["traffic"].items()
    ]
    return (
        Markdown()
        .heading(f"Multi-center run on {metrics['dataset']} ({metrics['engine']})", 1)
        .paragraph(f"Status: {metrics['status']}. Dropped centers: {metrics['dropped'] or 'none'}.")
        .extend(dice_section(metrics["dice"], metrics["centers"]))
        .bullets(f"Target `{name}`: {value}." for name, value in metrics["targets"].items())
        .table(
            ["phase", "rounds", "bytes down / center / round", "bytes up / center / round", "s / round"],
            traffic,
        )
        .text()
    )
