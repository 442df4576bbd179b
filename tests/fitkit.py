"""The tiny fits the tests train: phantom at 32², a few epochs, narrow networks, no raw U-Net."""

from __future__ import annotations

from pathlib import Path

TINY_FIT = [
    "data.dataset=phantom",
    "data.size=32",
    "data.phantom_cases=12",
    "train.progress=false",
    "compare_unet=false",
    "codec.width=8",
]
"""Settings every tiny fit shares; each test adds its epochs, threads and mapper."""

TINY_POLY = [*TINY_FIT, "train.epochs=15", "train.threads=2", "mapper.kind=poly", "mapper.poly_width=8"]
"""A tiny fit with the poly mapper, trained long enough to segment the phantom (Dice > 0.7)."""


def fit_run(tmp_path_factory, settings: list[str]) -> Path:
    """The run folder of one tiny fit with ``settings``, in a fresh temporary folder."""
    from privacysf.config import ExperimentConfig
    from privacysf.workflows.fit import run_fit

    out = tmp_path_factory.mktemp("runs")
    return run_fit(ExperimentConfig().override([*settings, f"output_dir={out}"]))[0]
