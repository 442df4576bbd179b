"""``privacysf bench``: the quick suite end to end, its files checked for completeness and sanity."""

from __future__ import annotations

import dataclasses
import json
import re
import statistics
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from privacysf.benchmark.jobs import PRIVACYSF, PRIVACYSF_SERVED, REFERENCE, UNET, plan
from privacysf.benchmark.latency import query_latency, query_stages
from privacysf.benchmark.runner import RESULTS, publish, run_bench, select
from privacysf.benchmark.suites import SUITES, get_suite
from privacysf.benchmark.targets import accuracy_summary, targets
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
    # 256² at downsample 4: 64×64 tokens × 4 values each way, two 4-bit values a byte, plus the headers
    assert 64 * 64 * 2 < payload[PRIVACYSF]["up"] < 64 * 64 * 2 + 400
    # the reference's float32 latents: 32²·64 + 16²·128 + 8²·256 values × 4 B each way (~0.88 MB)
    assert 458_752 < payload[REFERENCE]["up"] < 458_752 + 1200
    assert payload[REFERENCE]["total"] == pytest.approx(0.918e6, rel=0.01)

    *fuzz, total = [r for r in results["rows"] if r["kind"] == "service_fuzz"]
    assert total["target"] == "all" and total["server_errors"] == 0 and total["violations"] == []
    assert total["requests"] == sum(r["requests"] for r in fuzz) == get_suite("quick").fuzz_requests
    assert {r["target"] for r in fuzz} == {"map", "upload", "jobs"} and max(r["status"] for r in fuzz) < 500

    latency = [r for r in results["rows"] if r["kind"] == "latency"]
    expected = {(m, b) for m in (PRIVACYSF, PRIVACYSF_SERVED, REFERENCE, UNET) for b in (1, 4)}
    assert {(r["method"], r["batch"]) for r in latency} == expected
    for r in latency:
        assert r["per_image_ms"] == pytest.approx(r["total_ms"] / r["batch"]) and r["threads"] == 2
        if r["method"] == UNET:  # the baseline of every ratio, timed whole
            assert r["ratio"] == 1.0 and "map_ms" not in r
        else:  # a median of sums is at least the median of any of its parts
            assert min(r["encode_ms"], r["map_ms"], r["decode_ms"]) > 0
            assert r["total_ms"] >= max(r["encode_ms"], r["map_ms"], r["decode_ms"])
            assert (
                r["ratio"] > 0
            )  # its arithmetic: test_query_latency_times_pipelines_beside_their_baseline_in_turn

    scaling = [r for r in results["rows"] if r["kind"] == "scaling"]
    stages = {"mask_codec", "image_encoder", "server_mapper", "unet"}
    for key in [(32, 1.0), (64, 1.0), (64, 0.5)]:
        assert {r["stage"] for r in scaling if (r["size"], r["train_fraction"]) == key} == stages
    slices = {r["train_fraction"]: r["train_slices"] for r in scaling if r["size"] == 64}
    assert slices[0.5] == round(slices[1.0] / 2)


def _tables(markdown: str) -> dict[str, list[dict[str, str]]]:
    """The table under each ``## `` heading of a Markdown report, as rows of column header → cell."""
    tables: dict[str, list[dict[str, str]]] = {}
    heading, header = None, None
    for line in markdown.splitlines():
        if line.startswith("## "):
            heading, header = line[3:].strip(), None
        elif heading and line.startswith("|"):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            if header is None:
                header = cells
            elif not set(line) <= set("|-: "):
                tables.setdefault(heading, []).append(dict(zip(header, cells, strict=True)))
    return tables


def _numbers(cell: str) -> list[str]:
    """The numbers a cell shows; links (to run folders) are not figures."""
    return re.findall(r"-?\d+(?:\.\d+)?", re.sub(r"\[[^\]]*\]\([^)]*\)", "", cell))


def _shows(cell: str, expected) -> bool:
    """Whether ``cell`` shows ``expected``: the same text, or the same numbers at the cell's precision."""
    if isinstance(expected, str):
        return cell == expected
    values = list(expected) if isinstance(expected, tuple) else [expected]
    shown = _numbers(cell)
    return len(shown) == len(values) and all(
        abs(float(text) - value) <= 0.5 * 10.0 ** -len(text.partition(".")[2]) + 1e-9
        for text, value in zip(shown, values, strict=True)
    )


def _check_table(rows: list[dict[str, str]], expected: list[dict]) -> None:
    """Each expected row is shown by exactly one table row and the table has no other row; columns are
    found by the start of their header. Every column that shows a number is one of those checked."""
    assert len(rows) == len(expected), (rows, expected)
    for want in expected:
        columns = {key: next(h for h in rows[0] if h.lower().startswith(key.lower())) for key in want}
        matches = [row for row in rows if all(_shows(row[columns[k]], v) for k, v in want.items())]
        assert len(matches) == 1, (want, rows)
        unchecked = {h for h, cell in matches[0].items() if _numbers(cell)} - set(columns.values())
        assert not unchecked, f"numbers that come from no result: {unchecked} in {matches[0]}"


def _mean_dice(accuracy_rows: list[dict], method: str) -> float:
    """A method's Dice over the suite as the latency table shows it: the mean over datasets of the
    Accuracy table's means over seeds."""
    return statistics.mean(r["dice"][0] for r in accuracy_rows if r["method"] == method)


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _expected_accuracy(rows: list[dict]) -> tuple[list[dict], list[dict], list[dict]]:
    """Accuracy, per-seed and training-cost table rows, computed here from the result rows."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        if row["kind"] == "accuracy":
            groups.setdefault((row["dataset"], row["method"]), []).append(row)
    accuracy, per_seed, cost = [], [], []
    seeds = sorted({r["seed"] for members in groups.values() for r in members})
    for (dataset, method), members in groups.items():
        unet = statistics.mean(r["dice"] for r in groups[(dataset, UNET)])
        accuracy.append(
            {
                "dataset": dataset,
                "method": method,
                "seeds": len(members),
                **{m: _mean_std([r[m] for r in members]) for m in ("dice", "iou", "hd95", "assd")},
                "× raw U-Net": statistics.mean(r["dice"] for r in members) / unet,
            }
        )
        by_seed = {r["seed"]: r["dice"] for r in members}
        per_seed.append(
            {"dataset": dataset, "method": method, **{f"seed {k}": by_seed.get(k, "–") for k in seeds}}
        )
        for stage in members[0]["training_cost"]:
            costs = [r["training_cost"][stage] for r in members]
            cost.append(
                {
                    "dataset": dataset,
                    "method": method,
                    "stage": stage.replace("_", " "),
                    **{
                        column: statistics.mean(c[field] for c in costs)
                        for column, field in (
                            ("seconds", "seconds"),
                            ("s / epoch", "seconds_per_epoch"),
                            ("peak RSS", "peak_rss_mb"),
                            ("RSS growth", "rss_growth_mb"),
                        )
                    },
                }
            )
    return accuracy, per_seed, cost


class _Sleeper:
    """A stand-in center and server whose encode, map and decode each take ``ms``, and say so in ``log``."""

    def __init__(self, ms: float, log: list[str]) -> None:
        self.ms, self.log = ms, log

    def _wait(self, *_: object) -> bytes:
        self.log.append("stage")
        time.sleep(self.ms / 1000)
        return b""

    image_message = map = decode_message = _wait


def test_query_latency_times_pipelines_beside_their_baseline_in_turn():
    """Three 8 ms stages against a 12 ms baseline: the pipeline takes 2 × the baseline, and a slow spell
    that doubles every call of a repetition moves the times, not the ratio. Calls run in turn, baseline
    first, in every repetition (fails if a stage is left out of the total, the ratio is taken against
    another call, or the calls of one name run back to back)."""
    log: list[str] = []
    sleeper = _Sleeper(8.0, log)

    def baseline() -> None:  # first in every repetition, it sets that repetition's pace
        log.append("baseline")
        slow = log.count("baseline") % 3 == 0
        sleeper.ms = 16.0 if slow else 8.0
        time.sleep((24.0 if slow else 12.0) / 1000)

    images, cpu = np.zeros((2, 1, 4, 4), np.float32), torch.device("cpu")
    stages = query_stages(sleeper, sleeper, images)
    timing = query_latency({"pipeline": stages}, {"baseline": baseline}, 2, cpu, 9, 1)
    assert log[2:] == ["baseline", "stage", "stage", "stage"] * 10  # after the two that make the messages
    assert timing["baseline"]["ratio"] == 1.0 and "map_ms" not in timing["baseline"]
    assert timing["pipeline"]["ratio"] == pytest.approx(2.0, rel=0.2)  # sleeps overshoot a little
    assert timing["pipeline"]["per_image_ms"] == pytest.approx(timing["pipeline"]["total_ms"] / 2)
    with pytest.raises(ValueError, match="baseline"):
        query_latency({"baseline": stages}, {"baseline": baseline}, 2, cpu, 1, 0)


def test_report_tables_show_the_results_and_nothing_else(quick, tmp_path):
    """Every row of every results table in benchmarks.md is a result row (or the mean ± std over seeds
    of result rows, computed again here), every result row is in its table, and no table column shows a
    number that does not come from results.json."""
    run_dir, results = quick
    text = (run_dir / "benchmarks.md").read_text()
    assert "Partial run" not in text
    tables = _tables(text)
    sections = {"Targets", "Accuracy", "Dice per seed", "Payload per query", "Latency", "Training cost"}
    sections |= {"Training time beside the raw U-Net"}
    assert sections | {"Service fuzzing"} <= set(tables)
    rows = json.loads((run_dir / RESULTS).read_text())["rows"]
    accuracy, per_seed, cost = _expected_accuracy(rows)
    _check_table(tables["Accuracy"], accuracy)
    _check_table(tables["Dice per seed"], per_seed)
    _check_table(tables["Training cost"], cost)
    by_run = {(r["run"], r["method"]): r for r in rows if r["kind"] == "accuracy"}
    training = []
    for (run, method), r in by_run.items():
        if method == f"{PRIVACYSF} task":
            seconds = {k: c["seconds"] for k, c in r["training_cost"].items()}
            total, unet = sum(seconds.values()), by_run[(run, UNET)]["training_cost"]["unet"]["seconds"]
            training.append(
                {"dataset": r["dataset"], "seed": r["seed"], "mask codec": seconds["mask_codec"]}
                | {"image encoder": seconds["image_encoder"], "mapper": seconds["server_mapper"]}
                | {"all stages": total, "raw U-Net": unet, "×": total / unet}
            )
    _check_table(tables["Training time beside the raw U-Net"], training)
    of_kind = {kind: [r for r in rows if r["kind"] == kind] for kind in ("payload", "latency", "scaling")}
    _check_table(
        tables["Payload per query"],
        [
            {
                "method": r["method"],
                "image size": r["size"],
                "up": r["up"],
                "down": r["down"],
                "total": r["total"],
            }
            for r in of_kind["payload"]
        ],
    )
    _check_table(
        tables["Deflated payload per query"],
        [
            {
                "dataset": r["dataset"],
                "seed": r["seed"],
                "method": r["method"],
                "median": r["payload_bytes"],
                "of a uint8": r["payload_bytes"]
                * np.dtype(r["raw_image_dtype"]).itemsize
                / r["raw_image_bytes"],
            }
            for r in rows
            if r["kind"] == "accuracy" and r["method"].startswith(PRIVACYSF)
        ],
    )
    _check_table(
        tables["Latency"],
        [
            {
                "method": r["method"],
                "device": r["device"],
                "threads": r["threads"] or "–",
                "size": r["size"],
                "batch": r["batch"],
                **{
                    f"{stage} ms": r[f"{stage}_ms"]
                    for stage in ("encode", "map", "decode")
                    if r["method"] != UNET
                },
                "total ms": r["total_ms"],
                "ms/image": r["per_image_ms"],
                "× raw U-Net": r["ratio"],
                "Dice": _mean_dice(
                    accuracy, f"{PRIVACYSF} task" if r["method"].startswith(PRIVACYSF) else r["method"]
                ),
            }
            for r in of_kind["latency"]
        ],
    )
    _check_table(
        tables["Service fuzzing"],
        [
            {
                "endpoint": r["target"],
                "status": f"{r['server_errors']} × 5xx" if r["target"] == "all" else r["status"],
                "requests": r["requests"],
            }
            for r in rows
            if r["kind"] == "service_fuzz"
        ],
    )
    scaling = next(title for title in tables if title.startswith("Growth with image size"))
    _check_table(
        tables[scaling],
        [
            {
                "size": r["size"],
                "train share": r["train_fraction"],
                "train slices": r["train_slices"],
                "stage": r["stage"].replace("_", " "),
                "s / epoch": r["seconds_per_epoch"],
                "peak RSS": r["peak_rss_mb"],
                "RSS growth": r["rss_growth_mb"],
            }
            for r in of_kind["scaling"]
        ],
    )
    for name in ("dice.png", "latency.png", "scaling_size.png", "scaling_data.png"):
        assert (run_dir / "figures" / name).read_bytes()[:4] == b"\x89PNG"

    docs = tmp_path / "docs"
    retired = docs / "benchmarks" / "runs" / "20000101-000000-retired"  # an earlier publication's run
    old_plot = docs / "benchmarks" / "figures" / "retired.png"
    study = docs / "benchmarks" / "a-study.md"  # published by hand beside the bench's files
    retired.mkdir(parents=True)
    old_plot.parent.mkdir()
    old_plot.write_bytes(b"")
    study.write_text("kept")
    page = publish(run_dir, docs)
    published = page.read_text()
    links = re.findall(r"\]\(([^)]+)\)", published)
    assert links and all((docs / link).is_file() for link in links), links
    assert not retired.exists() and not old_plot.exists() and study.read_text() == "kept"


def test_resume_skips_finished_jobs_and_only_selects(quick, tmp_path):
    run_dir, results = quick
    runs_before = sorted((run_dir / "runs").iterdir())
    saved = json.loads((run_dir / RESULTS).read_text())
    retired = {
        **next(r for r in saved["rows"] if r["kind"] == "latency"),
        "job": "latency/cpu/privacysf/64/b1",
    }
    (run_dir / RESULTS).write_text(json.dumps({**saved, "rows": [*saved["rows"], retired]}))
    # the row of a job no longer planned (one latency job per method, before) is dropped, nothing reruns
    _, again = run_bench("quick", resume=run_dir, progress=False)
    assert sorted((run_dir / "runs").iterdir()) == runs_before and len(again["rows"]) == len(results["rows"])
    assert [j.id for j in select(plan(SUITES["quick"]), ["latency/*/64/*"])] == [
        "latency/cpu/64/b1",
        "latency/cpu/64/b4",
    ]
    longer = dataclasses.replace(SUITES["full"], epochs_by_dataset={"cells3d-nuclei": 150})
    full = {j.id: j.params.get("epochs") for j in plan(longer)}
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
    sizes = payload_bytes(center, server, np.zeros((1, 1, 256, 256), np.float32))
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


def _accuracy_row(method: str, seed: int, dice: float, seconds: dict[str, float], **extra) -> dict:
    scores = {"dice": dice, "iou": dice, "hd95": 1.0, "assd": 1.0, "distance_unit": "pixel"}
    costs = {stage: {"seconds": s} for stage, s in seconds.items()}
    return {"kind": "accuracy", "dataset": "d", "method": method, "seed": seed, "run": f"runs/{seed}"} | (
        scores | {"training_cost": costs} | extra
    )


def test_issue_17s_targets_are_judged_per_dataset_on_the_median_seed():
    """Dice ≥ 1.00 × the U-Net on the mean over seeds; the payload as sent ≤ 1/8 of the uint8 image and
    all training stages ≤ 3 × the U-Net's training, each on the median seed (a mean would miss both
    here: one seed of each is far off). Fails if the Dice target is the first round's 0.95, or if
    either of the others is judged on the mean or on another run's U-Net."""
    rows = []
    runs = [(0.10, 20.0, 10.0), (0.12, 30.0, 12.0), (0.50, 90.0, 10.0)]  # share, all stages s, U-Net s
    for seed, (share, stages, unet) in enumerate(runs):
        raw = 128 * 128 * 2  # stored as int16: the allowance is of the uint8 image, half these bytes
        seconds = {"mask_codec": stages / 2, "image_encoder": stages / 4, "server_mapper": stages / 4}
        payload = {"payload_bytes": round(share * raw / 2), "raw_image_bytes": raw}
        payload |= {"raw_image_dtype": "int16"}
        rows.append(_accuracy_row(f"{PRIVACYSF} task", seed, 0.99, seconds, **payload))
        rows.append(_accuracy_row(UNET, seed, 1.0, {"unet": unet}))
    judged = {t.name: (t.measured, t.met) for t in targets(rows, accuracy_summary(rows), {"size": 128})}
    assert judged == {
        "d: Dice ≥ 1.00 × raw U-Net": ("0.990 vs 1.000 (× 0.990)", False),
        "d: 128² query as sent, both ways, ≤ 1/8 of the uint8 image": (
            "0.120 of it (median of 3 seed(s))",
            True,
        ),
        "d: all training stages ≤ 3 × the raw U-Net's training": ("2.50 × (median of 3 seed(s))", True),
    }
