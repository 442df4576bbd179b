"""The bench's service load jobs: a real server process under concurrent clients, and its figures."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from fastapi import FastAPI, Response
from servicekit import LoopbackServer, free_port
from test_bench import _check_table, _tables

from privacysf.benchmark.runner import RESULTS, run_bench
from privacysf.benchmark.service_load import Call, drive, summary
from privacysf.benchmark.suites import get_suite
from privacysf.benchmark.targets import targets
from privacysf.common.resources import PeakMemory


@pytest.fixture(scope="module")
def service_rows(tmp_path_factory):
    run_dir, results = run_bench(
        "quick",
        tmp_path_factory.mktemp("bench"),
        only=["service/load", "service/upload-memory"],
        progress=False,
    )
    return run_dir, results["rows"]


def test_load_jobs_give_every_scenario_with_the_requests_asked_and_no_error(service_rows):
    _, rows = service_rows
    suite = get_suite("quick")
    load = [r for r in rows if r["kind"] == "service_load"]
    names = [f"map b{b}" for b in suite.latency_batches] + [
        f"upload {suite.service_upload_mb:g} MiB",
        "GET /jobs",
    ]
    assert sorted((r["scenario"], r["clients"]) for r in load) == sorted(
        (name, clients) for name in names for clients in suite.service_clients
    )
    [large] = [r for r in rows if r["kind"] == "upload_memory"]
    assert large["scenario"] == "large upload 4 MiB" and large["requests"] == 1
    assert large["body_bytes"] == pytest.approx(4 * 2**20, rel=0.01)
    for r in [*load, large]:
        asked = (
            1
            if r is large
            else suite.service_uploads
            if r["scenario"].startswith("upload")
            else suite.service_requests
        )
        ok = "201" if "upload" in r["scenario"] else "200"
        assert r["requests"] == asked and r["statuses"] == {ok: asked} and r["ok"] == asked, r
        assert r["errors_5xx"] == r["errors_transport"] == 0
        assert 0 < r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"] and r["throughput_rps"] > 0
        assert r["throughput_rps"] == pytest.approx(asked / r["seconds"])
        assert r["idle_rss_mb"] > 50 and r["peak_rss_mb"] >= r["idle_rss_mb"] and r["peak_above_idle_mb"] >= 0
    maps = {(r["scenario"], r["clients"]): r for r in load}
    assert maps["map b4", 1]["body_bytes"] > maps["map b1", 1]["body_bytes"]


def test_report_shows_the_service_rows(service_rows):
    run_dir, _ = service_rows
    rows = json.loads((run_dir / RESULTS).read_text())["rows"]
    columns = {
        "scenario": "scenario",
        "clients": "clients",
        "requests": "requests",
        "p50 ms": "p50_ms",
        "p95 ms": "p95_ms",
        "p99 ms": "p99_ms",
        "req/s": "throughput_rps",
        "5xx": "errors_5xx",
        "transport": "errors_transport",
        "idle RSS": "idle_rss_mb",
        "peak above idle": "peak_above_idle_mb",
    }
    expected = [
        {"body KiB": r["body_bytes"] / 1024, **{column: r[key] for column, key in columns.items()}}
        for r in rows
        if r["kind"] in ("service_load", "upload_memory")
    ]
    _check_table(_tables((run_dir / "benchmarks.md").read_text())["Service load"], expected)


def test_replies_without_success_are_counted_as_errors_by_kind():
    app = FastAPI()

    @app.get("/fail")
    def fail() -> Response:
        return Response(status_code=503)

    server = LoopbackServer(app).start()
    try:
        failing = summary(drive(server.url, {}, Call("GET", "/fail"), clients=3, requests=7), expect=200)
    finally:
        server.stop()
    assert failing["requests"] == 7 and failing["errors_5xx"] == 7 and failing["ok"] == 0
    nobody = summary(drive(f"http://127.0.0.1:{free_port()}", {}, Call("GET", "/"), 2, 5), expect=200)
    assert nobody["errors_transport"] == 5 and nobody["statuses"] == {"transport": 5}


def test_peak_memory_meters_the_process_it_is_given():
    """The server's memory figures are another process's: its growth, not the bench's, is measured."""
    allocate = "import time; time.sleep(0.5); block = b'x' * (200 * 2**20); print(flush=True); time.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", allocate], stdout=subprocess.PIPE)
    try:
        with PeakMemory(pid=child.pid) as peak:
            assert child.stdout is not None and child.stdout.readline() == b"\n"  # the block is held
    finally:
        child.kill()
        child.wait(10)
    assert peak.result is not None and peak.result.rss_growth_mb >= 150


def _upload_row(megabytes: float, above_idle: float, status: str = "201") -> dict:
    return {
        "kind": "upload_memory",
        "upload_mb": megabytes,
        "statuses": {status: 1},
        "idle_rss_mb": 250.0,
        "peak_above_idle_mb": above_idle,
    }


def test_the_upload_memory_target_is_judged_at_512_mib_only():
    def judged(*rows: dict) -> list[tuple[str, bool]]:
        return [(t.measured, t.met) for t in targets(list(rows), {}, {"size": 128})]

    assert judged(_upload_row(4.0, 500.0)) == []
    assert judged(_upload_row(512.0, 7.2)) == [("7.2 MiB above idle (250 MiB)", True)]
    assert judged(_upload_row(512.0, 100.5)) == [("100.5 MiB above idle (250 MiB)", False)]
    assert judged(_upload_row(512.0, 7.2, status="503"))[0][1] is False
