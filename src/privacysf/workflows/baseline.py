"""``privacysf baseline train|eval``: a raw U-Net run folder from a config."""

from __future__ import annotations

from pathlib import Path

from privacysf.common.figures import curves
from privacysf.common.runs import new_run_dir, write_json
from privacysf.common.torchutil import resolve_device
from privacysf.config import ExperimentConfig
from privacysf.data.prepare import prepare
from privacysf.errors import ConfigError
from privacysf.metrics.evaluation import save_test_overlays, score_test
from privacysf.nets.unet import load_unet, predict_labels, train_unet
from privacysf.workflows.session import open_run

CHECKPOINT = Path("checkpoints") / "unet.pt"


def train_baseline(cfg: ExperimentConfig) -> tuple[Path, dict]:
    """Train, early-stop on validation Dice, score the test split, write the run folder."""
    session = open_run(cfg, "baseline")
    device, data, run_dir = session.device, session.data, session.run_dir
    model, result = train_unet(cfg, data, device, run_dir / CHECKPOINT)
    pred = predict_labels(model, data.test.images, device)
    metrics = {
        "method": "raw-unet",
        "dataset": data.info.name,
        "test": score_test(pred, data),
        "training": {"seconds": round(result.seconds, 2), **result.outcome(), "device": str(device)},
        "split": data.split,
    }
    write_json(run_dir / "metrics.json", metrics)
    write_json(run_dir / "history.json", {"raw-unet": result.history})
    save_test_overlays(run_dir / "figures" / "overlays.png", data, {"raw U-Net": pred})
    curves(run_dir / "figures" / "curves.png", {"raw U-Net": result.history})
    return run_dir, metrics


def eval_baseline(run_dir: Path, overrides: list[str]) -> tuple[Path, dict]:
    """Re-score a trained run's checkpoint (optionally on other data via ``--set data.…``)."""
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise ConfigError(f"{run_dir} is not a baseline run folder (no config.json)")
    cfg = ExperimentConfig.load(config_path).override(overrides)
    device = resolve_device(cfg.train.device)
    data = prepare(cfg.data)
    model = load_unet(cfg, data.info.num_classes, run_dir / CHECKPOINT, device)
    pred = predict_labels(model, data.test.images, device)
    out_dir = new_run_dir(run_dir / "eval", Path(cfg.data.dataset).name)
    cfg.save(out_dir / "config.json")
    metrics = {
        "method": "raw-unet",
        "dataset": data.info.name,
        "test": score_test(pred, data),
        "split": data.split,
    }
    write_json(out_dir / "metrics.json", metrics)
    save_test_overlays(out_dir / "overlays.png", data, {"raw U-Net": pred})
    return out_dir, metrics
