"""The command line: user errors give one clear line and exit 2, never a traceback."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import ball_volume, write_plain_pair

from privacysf.cli import main


def run_cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "privacysf.cli", *args], capture_output=True, text=True, cwd=cwd
    )


def test_data_list_names_every_builtin(capsys):
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    for name in [
        "icbm152-tissue",
        "colin27-brain",
        "itk-t1-brain",
        "dsb-nuclei",
        "cells3d-nuclei",
        "totalseg-ct",
        "totalseg-mr",
        "phantom",
    ]:
        assert name in out
    totalseg = out[out.index("totalseg-ct") : out.index("phantom")]
    assert totalseg.count("licence: not stated for the example scans") == 2
    assert totalseg.count("silver standard") == 4  # in each description and each licence line


def test_data_show_writes_summary_and_montage(tmp_path, capsys):
    assert main(["data", "show", "dsb-nuclei", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "data-dsb-nuclei" / "summary.json").read_text())
    assert summary["train"]["shape"] == [1, 128, 128] and summary["classes"] == [
        "background",
        "nucleus",
    ]
    assert (tmp_path / "data-dsb-nuclei" / "montage.png").stat().st_size > 1000


def test_wrong_path_is_a_clear_error(tmp_path):
    result = run_cli("baseline", "train", "--dataset", str(tmp_path / "missing"), "--out", str(tmp_path))
    assert result.returncode == 2
    assert "privacysf: error: unknown dataset" in result.stderr
    assert "Traceback" not in result.stderr


def test_mismatched_mask_is_a_clear_error_and_keeps_existing_runs(tmp_path):
    image, labels = ball_volume()
    root = write_plain_pair(tmp_path / "data", "p1", image, labels[:, :5].astype(np.uint8))
    existing = tmp_path / "runs" / "old-run"
    existing.mkdir(parents=True)
    (existing / "metrics.json").write_text('{"kept": true}')
    result = run_cli("baseline", "train", "--dataset", str(root), "--out", str(tmp_path / "runs"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "p1.nii.gz" in result.stderr and "same voxel grid" in result.stderr
    assert json.loads((existing / "metrics.json").read_text()) == {"kept": True}
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["old-run"]


def test_bad_config_values(tmp_path):
    result = run_cli("baseline", "train", "--set", "train.nonsense=1", "--out", str(tmp_path))
    assert result.returncode == 2 and "train.nonsense: unknown key" in result.stderr
    result = run_cli("baseline", "train", "--set", "train.epochs=many", "--out", str(tmp_path))
    assert result.returncode == 2 and "train.epochs must be a valid integer" in result.stderr
    result = run_cli("baseline", "eval", str(tmp_path))
    assert result.returncode == 2 and "not a baseline run folder" in result.stderr


def test_config_values_are_checked_before_any_training(tmp_path):
    for setting, message in [
        ("mapper.width=60", "mapper.width must be a multiple of 8"),
        ("codec.downsample=3", "codec.downsample must be 2, 4, 8"),
        ("codec.image_mode=magic", "codec.image_mode must be 'autoencoder', 'task' or 'private'"),
        (
            "codec.wire_dtype=float64",
            "codec.wire_dtype must be 'float32', 'float16', 'int8', 'uint4' or 'uint2'",
        ),
        ("data.val_fraction=0", "data.val_fraction must lie in (0, 1), 0 excluded"),
    ]:
        result = run_cli("fit", "--set", setting, "--out", str(tmp_path))
        assert result.returncode == 2 and "Traceback" not in result.stderr, setting
        assert message in result.stderr, (setting, result.stderr)
    assert not any(tmp_path.iterdir())  # nothing was started


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_serve_and_worker_take_the_job_memory_bound(command):
    """Both load jobs, so both must hold the operator's bound (a worker checks it before training)."""
    from privacysf.cli.main import make_parser
    from privacysf.cli.service import _service_config
    from privacysf.server.settings import GiB, MiB

    args = ["server", command, "--max-job-training-mb", "300"]
    assert _service_config(make_parser().parse_args(args)).max_job_training_bytes == 300 * MiB
    assert _service_config(make_parser().parse_args(["server", command])).max_job_training_bytes == 4 * GiB
    with pytest.raises(SystemExit):  # a bound of 0 would refuse every upload and job
        make_parser().parse_args(["server", command, "--max-job-training-mb", "0"])


def test_serve_takes_the_mapper_runtime_and_stops_at_start_without_onnx_runtime(monkeypatch):
    """Fails if ``--mapper-runtime`` is dropped on its way to the service's config, or if a service
    without ONNX Runtime starts and fails only at its first mapping request, or if its refusal does
    not say how to serve without it."""
    import uvicorn

    from privacysf.cli.main import make_parser
    from privacysf.cli.service import _service_config
    from privacysf.errors import ConfigError
    from privacysf.server.service.app import serve

    cfg = _service_config(make_parser().parse_args(["server", "serve", "--mapper-runtime", "torch"]))
    assert cfg.mapper_runtime == "torch"
    cfg = _service_config(make_parser().parse_args(["server", "serve"]))
    assert cfg.mapper_runtime == "onnxruntime"  # the default
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed: importing it fails
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("the service started"))
    with pytest.raises(ConfigError, match=r"pip install 'privacysf\[onnx\]'.*--mapper-runtime torch"):
        serve(cfg)


def test_a_reader_that_leaves_early_gets_no_traceback():
    """``privacysf bench run full --list | head -1``: the listing meets a closed pipe, and the command
    stops quietly instead of printing a BrokenPipeError traceback. Fails without the handler in main."""
    listing = subprocess.Popen(
        [sys.executable, "-m", "privacysf.cli", "bench", "run", "full", "--list"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": ""},  # buffered, as a pipe is by default: written at exit
    )
    listing.stdout.close()  # the reader is gone before the first line is written
    errors = listing.stderr.read().decode()
    listing.stderr.close()
    assert listing.wait() == 1 and errors == ""
