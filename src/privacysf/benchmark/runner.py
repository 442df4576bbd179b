"""Run a suite's jobs one after another, saving every finished job's rows before the next starts."""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import shutil
import sys
import time
from pathlib import Path

from privacysf.benchmark.environment import machine, versions
from privacysf.benchmark.jobs import RUNNERS, Job, JobContext, plan
from privacysf.benchmark.report import write_benchmarks
from privacysf.benchmark.suites import BenchSuite, get_suite
from privacysf.common.runs import new_run_dir, write_json
from privacysf.common.torchutil import resolve_device
from privacysf.errors import ConfigError

RESULTS = "results.json"
REPORT = "benchmarks.md"
JOB_RUNS = "runs"
"""The folder of a bench folder, and of its publication, that holds the jobs' run folders."""
FIGURES = "figures"


def select(jobs: list[Job], patterns: list[str]) -> list[Job]:
    """Jobs whose id matches any shell-style pattern (all jobs when there is none)."""
    if not patterns:
        return jobs
    picked = [j for j in jobs if any(fnmatch.fnmatch(j.id, p) for p in patterns)]
    if not picked:
        raise ConfigError(
            f"--only {' '.join(patterns)} matches no job; list them with `privacysf bench run SUITE --list`"
        )
    return picked


def _read_results(run_dir: Path) -> dict:
    path = run_dir / RESULTS
    if not path.is_file():
        raise ConfigError(f"{run_dir} has no {RESULTS}; pass a folder written by `privacysf bench run`")
    return json.loads(path.read_text())


def _load(run_dir: Path, suite: BenchSuite) -> dict:
    results = _read_results(run_dir)
    if results.get("suite") != suite.name:
        raise ConfigError(f"{run_dir} holds the {results.get('suite')!r} suite, not {suite.name!r}")
    return results


def _row_fields(job: Job, suite: BenchSuite, run_dir: Path, device) -> dict:
    """What every row records besides its figures: where it came from and how to get it again."""
    return {
        "job": job.id,
        "kind": job.kind,
        "dataset": job.params.get("dataset", suite.scaling_dataset if job.kind == "scaling" else None),
        "seed": job.params.get("seed"),
        "epochs": job.params.get("epochs"),
        "command": f"privacysf bench run {suite.name} --only {job.id}",
        "machine": machine(device),
        "versions": versions(),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def _relative(row: dict, run_dir: Path) -> dict:
    """Run folders are stored relative to the bench folder, with their config file named."""
    if "run" in row:
        run = Path(row["run"]).relative_to(run_dir)
        row = {**row, "run": str(run), "config": str(run / "config.json")}
    return row


def run_bench(
    suite_name: str,
    out: str | Path = "runs",
    resume: Path | None = None,
    only: list[str] | None = None,
    device_name: str = "auto",
    progress: bool = True,
) -> tuple[Path, dict]:
    """Run (or resume) a suite; ``results.json`` is rewritten after every job, the report at the end."""
    suite = get_suite(suite_name)
    device = resolve_device(device_name)
    planned = plan(suite)
    jobs = select(planned, only or [])
    if resume is not None:
        run_dir, results = resume, _load(resume, suite)
    else:
        run_dir = new_run_dir(out, f"bench-{suite.name}")
        results = {"suite": suite.name, "rows": []}
    results["settings"] = dataclasses.asdict(suite)  # each row also records its own config and epochs
    results["planned"] = [j.id for j in planned]  # the whole suite: the report says what is missing
    kept = [row for row in results["rows"] if row["job"] in results["planned"]]
    if len(kept) < len(results["rows"]):  # jobs an earlier version planned (one latency job per method)
        print(
            f"bench {suite.name}: {len(results['rows']) - len(kept)} row(s) of jobs no longer planned dropped"
        )
        results["rows"] = kept
    done = {row["job"] for row in results["rows"]}
    todo = [j for j in jobs if j.id not in done]
    ctx = JobContext(suite, run_dir / JOB_RUNS, device.type, progress)
    print(f"bench {suite.name}: {len(todo)} job(s) to run, {len(jobs) - len(todo)} already done; {run_dir}")
    for number, job in enumerate(todo, start=1):
        started = time.perf_counter()
        print(f"[{number}/{len(todo)}] {job.id} …", flush=True)
        try:
            rows = RUNNERS[job.kind](job, ctx)
        except BaseException:
            print(
                f"privacysf: job {job.id} did not finish; the {len(results['rows'])} row(s) of finished "
                f"jobs are in {run_dir / RESULTS}. Resume with: "
                f"privacysf bench run {suite.name} --resume {run_dir}",
                file=sys.stderr,
            )
            raise
        fields = _row_fields(job, suite, run_dir, device)
        results["rows"] += [{**fields, **_relative(row, run_dir)} for row in rows]
        write_json(run_dir / RESULTS, results)
        print(f"[{number}/{len(todo)}] {job.id} done in {time.perf_counter() - started:.0f} s", flush=True)
    write_json(run_dir / RESULTS, results)
    write_benchmarks(results, run_dir / REPORT, run_dir / FIGURES, link_prefix="", results_link=RESULTS)
    return run_dir, results


def publish(run_dir: Path, docs: Path) -> Path:
    """Copy a bench folder's results, figures and each run's config and metrics under ``docs``.

    The Markdown lands at ``docs/benchmarks.md`` and everything it cites under ``docs/benchmarks/``,
    so each published number can be traced to a results file and the run folder it came from. Only
    what an earlier publication wrote there is replaced (its results file, run folders and figures):
    the folder also keeps studies published by hand beside it, which no bench run could write again.
    """
    results = _read_results(run_dir)  # before anything already published is replaced
    target = docs / "benchmarks"
    for owned in (target / JOB_RUNS, target / FIGURES):
        if owned.exists():
            shutil.rmtree(owned)
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy2(run_dir / RESULTS, target / RESULTS)
    for run in sorted({row["run"] for row in results["rows"] if "run" in row}):
        for name in ("config.json", "metrics.json", "data.json"):
            source = run_dir / run / name
            if source.is_file():
                (target / run).mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target / run / name)
    write_benchmarks(
        results,
        docs / REPORT,
        target / FIGURES,
        link_prefix="benchmarks/",
        results_link=f"benchmarks/{RESULTS}",
    )
    return docs / REPORT
