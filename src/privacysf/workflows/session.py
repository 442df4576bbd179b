"""The common start of every training command: seed, device, data, and a fresh run folder.

Data is prepared before the run folder is created, so a bad dataset fails without leaving an empty
or half-written run behind.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from privacysf.common.runs import new_run_dir, write_json
from privacysf.common.torchutil import resolve_device, seed_everything
from privacysf.config import ExperimentConfig
from privacysf.data.prepare import PreparedData, describe, prepare


@dataclass
class RunSession:
    device: torch.device
    data: PreparedData
    run_dir: Path


def open_run(cfg: ExperimentConfig, label: str) -> RunSession:
    """Seed, pick the device, prepare the data, then create ``<output>/<time>-<label>-<dataset>``."""
    seed_everything(cfg.train.seed, cfg.train.threads)
    device = resolve_device(cfg.train.device)
    data = prepare(cfg.data)
    run_dir = new_run_dir(cfg.output_dir, f"{label}-{Path(cfg.data.dataset).name}")
    cfg.save(run_dir / "config.json")
    write_json(run_dir / "data.json", describe(data))
    return RunSession(device, data, run_dir)
