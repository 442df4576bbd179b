"""``benchmarks.md`` and its plots, generated from ``results.json`` alone.

Nothing here measures anything: every number in the report is read from a result row, and each table
names the job (and run folder) it came from, so the document can be regenerated and checked.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from privacysf.benchmark.jobs import PRIVACYSF, PRIVACYSF_SERVED, UNET
from privacysf.benchmark.latency import STAGES
from privacysf.benchmark.targets import (
    DEFAULT_MODE,
    accuracy_summary,
    deflated_payload_share,
    targets,
    training_times,
)
from privacysf.common.figures import dice_bars, lines, stacked_bars
from privacysf.common.markdown import Markdown, plus_minus


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample std over seeds (0 for a single seed)."""
    array = np.asarray(values, float)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0


def pm(values: list[float], digits: int) -> str:
    return plus_minus(*mean_std(values), digits)


def _stage(name: str) -> str:
    return name.replace("_", " ")


def _accuracy_table(summary: dict, link: str) -> Markdown:
    rows = []
    for (dataset, method), s in summary.items():
        unet = summary.get((dataset, UNET))
        runs = ", ".join(f"[{i + 1}]({link}{run}/metrics.json)" for i, run in enumerate(s["runs"]))
        rows.append(
            [
                dataset,
                method,
                len(s["seeds"]),
                pm(s["dice"], 3),
                pm(s["iou"], 3),
                f"{pm(s['hd95'], 2)} {s['unit']}",
                f"{pm(s['assd'], 2)} {s['unit']}",
                np.mean(s["dice"]) / np.mean(unet["dice"]) if unet else None,
                runs,
            ]
        )
    head = ["dataset", "method", "seeds", "Dice", "IoU", "HD95", "ASSD", "× raw U-Net", "runs"]
    return Markdown().table(head, rows, [""] * 7 + [".3f"])


def _per_seed_table(summary: dict, seeds: list[int]) -> Markdown:
    """Dice of every method on each seed: a split that is hard for all methods shows as one column."""
    rows = []
    for (dataset, method), s in summary.items():
        by_seed = {r["seed"]: r["dice"] for r in s["rows"]}
        rows.append([dataset, method, *(by_seed.get(k) for k in seeds)])
    head = ["dataset", "method", *(f"seed {k}" for k in seeds)]
    return Markdown().table(head, rows, ["", "", *[".3f"] * len(seeds)])


def _fuzz_table(rows: list[dict]) -> Markdown:
    """Answers to the structure-aware fuzzer per endpoint and status; the last row is the run's total."""
    table = []
    for r in rows:
        if r["kind"] == "service_fuzz":
            status = f"{r['server_errors']} × 5xx" if r["target"] == "all" else r["status"]
            table.append([r["target"], status, r["requests"]])
    return Markdown().table(["endpoint", "status", "requests"], table)


def _payload_table(rows: list[dict]) -> Markdown:
    table = [
        [r["method"], f"{r['size']}²", r["up"], r["down"], r["total"]] for r in rows if r["kind"] == "payload"
    ]
    return Markdown().table(["method", "image size", "up (B)", "down (B)", "total (B)"], table)


def _deflated_payload_table(rows: list[dict]) -> Markdown:
    """Each accuracy run's median deflated query over its test slices, beside the uint8 image it codes."""
    table = []
    for r in rows:
        if r["kind"] == "accuracy" and "payload_bytes" in r and r["method"].startswith(PRIVACYSF):
            share = deflated_payload_share(r)
            table.append([r["dataset"], r["seed"], r["method"], r["payload_bytes"], f"{share:.3f}"])
    head = ["dataset", "seed", "method", "median query, deflated (B)", "of a uint8 image"]
    return Markdown().table(head, table)


def _scored_as(method: str) -> str:
    """The accuracy rows a latency row's method is scored by: Privacy-SF's default (``task``) mode,
    whichever runtime maps (ONNX Runtime answers as torch does, up to float rounding)."""
    return DEFAULT_MODE if method in (PRIVACYSF, PRIVACYSF_SERVED) else method


def mean_dice(summary: dict, method: str, datasets: set[str]) -> float | None:
    """A method's test Dice over ``datasets``: the mean over them of its mean over seeds (None where
    it lacks one)."""
    method = _scored_as(method)
    means = [float(np.mean(summary[(d, method)]["dice"])) for d in datasets if (d, method) in summary]
    return float(np.mean(means)) if datasets and len(means) == len(datasets) else None


def _latency_table(rows: list[dict], summary: dict) -> Markdown:
    latency = [r for r in rows if r["kind"] == "latency"]
    methods = {_scored_as(r["method"]) for r in latency}
    # the datasets every method shown was scored on, so their Dice are averages of the same sets
    shared = {d for d, _ in summary if all((d, m) in summary for m in methods)}
    times = ["encode_ms", "map_ms", "decode_ms", "total_ms", "per_image_ms"]
    table = [
        [r["method"], r["device"], r["threads"] or None, f"{r['size']}²", r["batch"]]
        + [r.get(k) for k in times]
        + [r.get("ratio"), mean_dice(summary, r["method"], shared)]
        for r in latency
    ]
    head = [
        "method",
        "device",
        "threads",
        "size",
        "batch",
        "encode ms",
        "map ms",
        "decode ms",
        "total ms",
        "ms/image",
        "× raw U-Net",
        "Dice",
    ]
    return Markdown().table(head, table, [""] * 5 + [".1f"] * 4 + [".2f", ".2f", ".3f"])


def _service_table(rows: list[dict]) -> Markdown:
    kinds = ("service_load", "upload_memory")
    table = [
        [
            r["scenario"],
            r["clients"],
            r["requests"],
            r["body_bytes"] / 1024,
            r["p50_ms"],
            r["p95_ms"],
            r["p99_ms"],
            r["throughput_rps"],
            r["errors_5xx"],
            r["errors_transport"],
            r["idle_rss_mb"],
            r["peak_above_idle_mb"],
        ]
        for r in rows
        if r["kind"] in kinds
    ]
    head = [
        "scenario",
        "clients",
        "requests",
        "body KiB",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "req/s",
        "5xx",
        "transport errors",
        "idle RSS MiB",
        "peak above idle MiB",
    ]
    return Markdown().table(
        head, table, ["", "", "", ".1f", ".1f", ".1f", ".1f", ".1f", "", "", ".0f", ".0f"]
    )


def _cost_table(summary: dict) -> Markdown:
    measures = ("seconds", "seconds_per_epoch", "peak_rss_mb", "rss_growth_mb")
    table = []
    for (dataset, method), s in summary.items():
        stages: dict[str, list[dict]] = defaultdict(list)
        for row in s["rows"]:
            for stage, cost in row.get("training_cost", {}).items():
                stages[stage].append(cost)
        for stage, costs in stages.items():
            table.append(
                [dataset, method, _stage(stage), *(np.mean([c[k] for c in costs]) for k in measures)]
            )
    head = [
        "dataset",
        "method",
        "stage",
        "seconds (mean of seeds)",
        "s / epoch",
        "peak RSS MiB",
        "RSS growth MiB",
    ]
    return Markdown().table(head, table, ["", "", "", ".1f", ".2f", ".0f", ".0f"])


def _training_time_table(summary: dict) -> Markdown:
    columns = ("mask_codec", "image_encoder", "server_mapper", "all_stages", "unet", "ratio")
    table = [[t["dataset"], t["seed"], *(t[k] for k in columns)] for t in training_times(summary)]
    head = ["dataset", "seed", "mask codec s", "image encoder s", "mapper s", "all stages s"]
    head += ["raw U-Net s", "× raw U-Net"]
    return Markdown().table(head, table, ["", ""] + [".1f"] * 5 + [".2f"])


def _scaling_table(rows: list[dict], link: str) -> Markdown:
    scaling = sorted(
        (r for r in rows if r["kind"] == "scaling"),
        key=lambda r: (r["size"], r["train_fraction"], r["stage"]),
    )
    table = [
        [
            f"{r['size']}²",
            r["train_fraction"],
            r["train_slices"],
            _stage(r["stage"]),
            r["seconds_per_epoch"],
            r["peak_rss_mb"],
            r["rss_growth_mb"],
            f"[run]({link}{r['run']}/metrics.json)",
        ]
        for r in scaling
    ]
    head = [
        "size",
        "train share",
        "train slices",
        "stage",
        "s / epoch",
        "peak RSS MiB",
        "RSS growth MiB",
        "run",
    ]
    return Markdown().table(head, table, ["", "g", "", "", ".2f", ".0f", ".0f"])


def _plots(rows: list[dict], summary: dict, settings: dict, figures: Path) -> list[str]:
    made = []
    datasets = sorted({d for d, _ in summary})
    methods = list(dict.fromkeys(m for _, m in summary))
    if summary:
        means = {
            m: {d: mean_std(summary[(d, m)]["dice"]) for d in datasets if (d, m) in summary} for m in methods
        }
        table = {m: {d: ms[0] for d, ms in by.items()} for m, by in means.items()}
        spread = {m: {d: ms[1] for d, ms in by.items()} for m, by in means.items()}
        dice_bars(figures / "dice.png", table, datasets, {}, spread, "test Dice, mean ± std over seeds")
        made.append("dice.png")
    batch_one = [r for r in rows if r["kind"] == "latency" and r["batch"] == 1]
    if batch_one:
        short = {PRIVACYSF: "PSF", PRIVACYSF_SERVED: "PSF ORT", UNET: "U-Net"}
        labels = [f"{short.get(r['method'], 'ref')} {r['size']}² {r['device']}" for r in batch_one]
        # bars add the stage medians (the table's total is the median of per-repetition sums)
        stacks = {stage: [r.get(f"{stage}_ms", 0.0) for r in batch_one] for stage in STAGES}
        stacks["U-Net inference"] = [r["total_ms"] if r["method"] == UNET else 0.0 for r in batch_one]
        stacks = {name: bars for name, bars in stacks.items() if any(bars)}
        stacked_bars(figures / "latency.png", labels, stacks, "ms per query (median)", "latency at batch 1")
        made.append("latency.png")
    scaling = [r for r in rows if r["kind"] == "scaling"]
    for axis, fixed, value, name, xlabel in (
        ("size", "train_fraction", 1.0, "scaling_size.png", "image side (pixels)"),
        ("train_slices", "size", settings["size"], "scaling_data.png", "training slices"),
    ):
        series: dict[str, tuple[list[float], list[float]]] = {}
        for r in sorted((r for r in scaling if r[fixed] == value), key=lambda r: r[axis]):
            xs, ys = series.setdefault(_stage(r["stage"]), ([], []))
            xs.append(r[axis])
            ys.append(r["seconds_per_epoch"])
        if any(len(xs) > 1 for xs, _ in series.values()):
            lines(figures / name, series, xlabel, "seconds per epoch", f"training time vs {xlabel}")
            made.append(name)
    return made


def _header(results: dict, results_link: str) -> Markdown:
    rows, settings, suite = results["rows"], results["settings"], results["suite"]
    epochs = "".join(f" ({d}: {e})" for d, e in settings.get("epochs_by_dataset", {}).items())
    out = (
        Markdown()
        .heading(f"Benchmarks ({suite} suite)", 1)
        .paragraph(
            f"Generated by `privacysf bench run {suite}` from [{results_link}]({results_link}); every "
            "number below is a field of a row there, and each row names its job, the command that reruns "
            "it alone, its run folder and config, the machine and the library versions."
        )
        .paragraph(
            f"Suite: {settings['description']}. Accuracy jobs: {', '.join(settings['datasets'])} at "
            f"{settings['size']}², {settings['epochs']} epochs{epochs}, seeds "
            f"{', '.join(map(str, settings['seeds']))}, {settings['threads']} CPU threads."
        )
    )
    if rows:
        m, v = rows[0]["machine"], rows[0]["versions"]
        gpu = f" ({m['gpu']})" if m.get("gpu") else ""
        versions = ", ".join(f"{k} {val}" for k, val in v.items())
        out.paragraph(f"Machine: {m['cpu']}, {m['cores']} cores, device {m['device']}{gpu}; {versions}.")
    done = {r["job"] for r in rows}
    missing = [j for j in results["planned"] if j not in done]
    if missing:
        out.paragraph(
            f"**Partial run: {len(missing)} of {len(results['planned'])} planned jobs have no result yet** "
            f"(resume with `privacysf bench run {suite} --resume RUN_FOLDER`): "
            + ", ".join(f"`{j}`" for j in missing)
        )
    return out


def targets_table(rows: list[dict], summary: dict, settings: dict) -> Markdown:
    table = [[t.name, t.measured, t.verdict] for t in targets(rows, summary, settings)]
    return Markdown().table(["target", "measured", "verdict"], table)


def write_benchmarks(
    results: dict, md_path: Path, figures: Path, link_prefix: str, results_link: str
) -> None:
    """Write the report of ``results`` to ``md_path`` and its plots to ``figures``."""
    rows, settings = results["rows"], results["settings"]
    summary = accuracy_summary(rows)
    plots = _plots(rows, summary, settings, figures)
    fig_link = figures.relative_to(md_path.parent).as_posix()
    sections = [
        ("Targets", "", targets_table(rows, summary, settings), []),
        (
            "Accuracy",
            "Test scores are means over the test slices of one run; the table gives their mean ± std over "
            "seeds (the seed sets the split and the training). The reference is a re-implementation of the "
            "published Improved Privacy-SF design from the paper's description, trained with the same split, "
            "epochs and optimiser.",
            _accuracy_table(summary, link_prefix),
            ["dice.png"],
        ),
        (
            "Dice per seed",
            "The seed sets the split: on the single-volume datasets (slab splits) one seed's test slabs can "
            "hold slices no training slab resembles, which lowers every method on that seed alike.",
            _per_seed_table(summary, settings["seeds"]),
            [],
        ),
        (
            "Payload per query",
            "Real wire messages, headers included: the most one query sends, not deflated (untrained "
            "networks; deflating never lengthens a message).",
            _payload_table(rows),
            [],
        ),
        (
            "Deflated payload per query",
            "Each accuracy run's median query over its test slices, both ways, as sent with "
            "`codec.wire_compression` (deflated where that shortens a message), beside the uint8 image.",
            _deflated_payload_table(rows),
            [],
        ),
        (
            "Service fuzzing",
            "Structure-aware hostile requests (privacysf.benchmark.fuzzing, fixed seed) to `privacysf "
            "server serve`: valid wire messages and job bodies with one field, prefix or body made hostile. "
            "The last row counts every request and the answers of 500 or above.",
            _fuzz_table(rows),
            [],
        ),
        (
            "Latency",
            "Privacy-SF (defaults, its mapper in torch as `fit` and `segment` run it, and in ONNX Runtime"
            " as the service does on the CPU), the reference and the raw U-Net answer the same batch in "
            "one process, each call timed in turn within every repetition after warm-up. Per stage, the "
            "median over repetitions, wire messages included; total is the median of the per-repetition "
            "sums, and × raw U-Net the median of the per-repetition ratios of a total to the U-Net's "
            "inference (labels out, from and to host memory). Networks are untrained (the arithmetic does"
            " not depend on weights). Dice: the method's test Dice in this suite, mean over the datasets "
            "every method shown was scored on of the mean over seeds (Privacy-SF: `task` mode, either "
            "runtime).",
            _latency_table(rows, summary),
            ["latency.png"],
        ),
        (
            "Service load",
            "A `privacysf server serve` process on loopback with a tiny trained model, driven by concurrent "
            "clients (threads on the same machine, one keep-alive connection each) after one warm-up call. "
            "Latency is per request; req/s is requests over the wall time of the scenario; memory is the "
            "server's RSS sampled every 50 ms, above its RSS just before the scenario. The large upload runs "
            "alone on a fresh server, streamed by a client that never holds it, its RSS sampled every 5 ms.",
            _service_table(rows),
            [],
        ),
        (
            "Training time beside the raw U-Net",
            "Privacy-SF's training stages (`task` mode) and the raw U-Net's training on the same split, in "
            "the same process and on the same threads: seconds per stage and the ratio of their sum to the "
            "U-Net's. The U-Net stops early on its own validation score (`train.patience`), as every stage "
            "but the mask codec does.",
            _training_time_table(summary),
            [],
        ),
        (
            "Training cost",
            "Wall time and memory of each network's training. Peak RSS is the process's resident memory "
            "sampled every 50 ms during the stage (it includes the loaded data and libraries); growth is the "
            "rise over the stage's start.",
            _cost_table(summary),
            [],
        ),
        (
            "Growth with image size and dataset size",
            f"Scaling runs: {settings['scaling_dataset']}, {settings['scaling_epochs']} epochs each, seed 0.",
            _scaling_table(rows, link_prefix),
            ["scaling_size.png", "scaling_data.png"],
        ),
    ]
    report = _header(results, results_link)
    for title, intro, table, pictures in sections:
        report.heading(title)
        if intro:
            report.paragraph(intro)
        report.extend(table)
        for name in pictures:
            if name in plots:
                report.figure(name, f"{fig_link}/{name}")
    report.write(md_path)
