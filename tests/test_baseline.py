"""The raw U-Net learns an easy task end to end and its run folder is complete."""

import json

import pytest

from privacysf.config import ExperimentConfig
from privacysf.errors import ConfigError
from privacysf.workflows.baseline import CHECKPOINT, eval_baseline, train_baseline


@pytest.fixture(scope="module")
def phantom_run(tmp_path_factory):
    cfg = ExperimentConfig().override(
        [
            "data.dataset=phantom",
            "data.size=64",
            "data.phantom_cases=40",
            "train.epochs=30",
            "train.progress=false",
            "train.threads=2",
            f"output_dir={tmp_path_factory.mktemp('runs')}",
        ]
    )
    return train_baseline(cfg)


def test_unet_reaches_dice_on_phantoms(phantom_run):
    run_dir, metrics = phantom_run
    assert metrics["test"]["mean"]["dice"]["mean"] > 0.8
    assert metrics["test"]["n_images"] == 8
    for name in [
        "config.json",
        "metrics.json",
        "history.json",
        "data.json",
        "figures/overlays.png",
        "figures/curves.png",
        str(CHECKPOINT),
    ]:
        assert (run_dir / name).is_file(), name
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["data"]["size"] == 64


def test_eval_reproduces_and_refuses_other_configuration(phantom_run):
    run_dir, metrics = phantom_run
    out_dir, again = eval_baseline(run_dir, [])
    assert again["test"]["mean"]["dice"]["mean"] == pytest.approx(
        metrics["test"]["mean"]["dice"]["mean"], abs=1e-6
    )
    with pytest.raises(ConfigError, match="another configuration"):
        eval_baseline(run_dir, ["data.size=32"])
