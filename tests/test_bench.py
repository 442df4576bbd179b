"""``privacysf bench``: the quick suite end to end, its files checked for completeness and sanity."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from privacysf.benchmark.jobs import PRIVACYSF, REFERENCE, UNET, plan
from privacysf.benchmark.runner import RESULTS, publish, run_bench, select
from privacysf.benchmark.suites import SUITES, get_suite
from privacysf.cli import main
from privacysf.common.resources import PeakMemory
from privacysf.config import DataConfig
from privacysf.data.prepare import prepare
from privacysf.errors import ConfigError
from privacysf.reference.center import MultiScaleEncoder
from privacysf.reference.run import untrained_reference
from privacysf.workflows.inprocess import payload_bytes


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> tuple[Path, dict]:
    return run_bench("quick", tmp_path_factory.mktemp("bench"), progress=False)


def test_quick_suite_runs_every_planned_job_and_rows_are_sane(quick):
    run_dir, results = quick
    on_disk = json.loads((run_dir / RESULTS).read_text())
    assert on_disk["rows"] == json.loads(json.dumps(results["rows"]))
    planned = [job.id for job in plan(get_suite("quick"))]
    assert sorted({row["job"] for row in results["rows"]}) == sorted(planned) == sorted(results["planned"])
    for row in results["rows"]:
        assert row["command"] == f"privacysf bench run quick --only {row['job']}"
        assert row["machine"]["cores"] >= 1 and row["versions"]["torch"] == torch.__version__
        if "run" in row:  # a trained job: its run folder and config are where the row says
            assert (run_dir / row["config"]).is_file() and (run_dir / row["run"] / "metrics.json").is_file()

    accuracy = [r for r in results["rows"] if r["kind"] == "accuracy"]
    methods = {f"{PRIVACYSF} {mode}" for mode in ("task", "autoencoder", "private")} | {UNET, REFERENCE}
    assert {r["method"] for r in accuracy} == methods
    for r in accuracy:
        assert 0 <= r["dice"] <= 1 and 0 <= r["iou"] <= r["dice"] + 1e-9, r
        assert r["hd95"] >= r["assd"] >= 0 and r["test_slices"] > 0
        assert r["epochs"] == 2
        for cost in r["training_cost"].values():
            assert cost["epochs"] == 2 and cost["seconds"] > 0 and cost["peak_rss_mb"] > 100
    ours = next(r for r in accuracy if r["method"] == f"{PRIVACYSF} task")
    assert ours["pipeline_seconds"] > 0 and ours["payload_bytes"] < ours["raw_image_bytes"]

    payload = {r["method"]: r for r in results["rows"] if r["kind"] == "payload"}
    # 256² at downsample 4: 64×64 tokens × 4 int8 values each way, plus the headers
    assert 64 * 64 * 4 < payload[PRIVACYSF]["up"] < 64 * 64 * 4 + 400
    # the reference's float32 latents: 32²·64 + 16²·128 + 8²·256 values × 4 B each way (~0.88 MB)
    assert 458_752 < payload[REFERENCE]["up"] < 458_752 + 1200
    assert payload[REFERENCE]["total"] == pytest.approx(0.918e6, rel=0.01)

    latency = [r for r in results["rows"] if r["kind"] == "latency"]
    expected = {(m, b) for m in (PRIVACYSF, REFERENCE) for b in (1, 4)}
    assert {(r["method"], r["batch"]) for r in latency} == expected
    for r in latency:
        stages = r["encode_ms"] + r["map_ms"] + r["decode_ms"]
        assert min(r["encode_ms"], r["map_ms"], r["decode_ms"]) > 0 and r["total_ms"] == pytest.approx(stages)
        assert r["per_image_ms"] == pytest.approx(r["total_ms"] / r["batch"]) and r["threads"] == 2

    scaling = [r for r in results["rows"] if r["kind"] == "scaling"]
    stages = {"mask_codec", "image_encoder", "server_mapper", "unet"}
    for key in [(32, 1.0), (64, 1.0), (64, 0.5)]:
        assert {r["stage"] for r in scaling if (r["size"], r["train_fraction"]) == key} == stages
    slices = {r["train_fraction"]: r["train_slices"] for r in scaling if r["size"] == 64}
    assert slices[0.5] == round(slices[1.0] / 2)


def test_report_has_every_section_and_only_numbers_from_the_results(quick, tmp_path):
    run_dir, results = quick
    text = (run_dir / "benchmarks.md").read_text()
    headings = ("## Targets", "## Accuracy", "## Dice per seed", "## Payload per query", "## Latency")
    for heading in (*headings, "## Training cost"):
        assert heading in text
    assert "Partial run" not in text
    ours = next(r for r in results["rows"] if r["method"] == f"{PRIVACYSF} task" and r["kind"] == "accuracy")
    assert f"{ours['dice']:.3f} ± 0.000" in text
    assert str(next(r["total"] for r in results["rows"] if r["kind"] == "payload")) in text
    for name in ("dice.png", "latency.png", "scaling_size.png", "scaling_data.png"):
        assert (run_dir / "figures" / name).read_bytes()[:4] == b"\x89PNG"

    docs = tmp_path / "docs"
    page = publish(run_dir, docs)
    published = page.read_text()
    links = re.findall(r"\]\(([^)]+)\)", published)
    assert links and all((docs / link).is_file() for link in links), links


def test_resume_skips_finished_jobs_and_only_selects(quick, tmp_path):
    run_dir, results = quick
    runs_before = sorted((run_dir / "runs").iterdir())
    _, again = run_bench("quick", resume=run_dir, progress=False)
    assert sorted((run_dir / "runs").iterdir()) == runs_before and len(again["rows"]) == len(results["rows"])
    assert [j.id for j in select(plan(SUITES["quick"]), ["latency/*/reference/*"])] == [
        "latency/cpu/reference/64/b1",
        "latency/cpu/reference/64/b4",
    ]
    full = {j.id: j.params.get("epochs") for j in plan(SUITES["full"])}
    assert (
        full["accuracy/cells3d-nuclei/seed0/reference"] == 150
        and full["accuracy/phantom/seed2/reference"] == 30
    )
    with pytest.raises(ConfigError, match="matches no job"):
        select(plan(SUITES["quick"]), ["nothing/*"])
    with pytest.raises(ConfigError, match="holds the 'quick' suite"):
        run_bench("full", resume=run_dir, only=["payload"], progress=False)
    assert main(["bench", "run", "nightly", "--list"]) == 2
    assert main(["bench", "report", str(tmp_path), "--docs", str(tmp_path / "docs")]) == 2
    assert not (tmp_path / "docs").exists()


def test_reference_latents_and_payload_match_the_published_design():
    latents = MultiScaleEncoder(1)(torch.zeros(1, 1, 256, 256))
    assert [tuple(z.shape[1:]) for z in latents] == [(64, 32, 32), (128, 16, 16), (256, 8, 8)]
    center, server = untrained_reference(3, 256, torch.device("cpu"))
    sizes = payload_bytes(center, server, np.zeros((1, 256, 256), np.float32))
    assert sizes["up"] == sizes["down"] + 3 and sizes["total"] / 2**20 == pytest.approx(0.876, abs=0.002)


def test_peak_memory_sees_an_allocation_and_train_fraction_keeps_that_share():
    with PeakMemory() as peak:
        block = np.ones(256 * 2**20, np.uint8)  # 256 MiB of fresh, touched pages (mmap-sized)
        time.sleep(0.3)  # several sampling periods while it is held
        del block
    assert peak.result.rss_growth_mb >= 200 and peak.result.peak_rss_mb >= peak.result.rss_growth_mb
    full = prepare(DataConfig(dataset="phantom", size=32, phantom_cases=12))
    half = prepare(DataConfig(dataset="phantom", size=32, phantom_cases=12, train_fraction=0.5))
    assert len(half.train) == round(len(full.train) / 2) and len(half.test) == len(full.test)
    assert set(half.train.case_ids) <= set(full.train.case_ids)
