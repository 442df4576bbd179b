"""``benchmarks.md`` and its plots, generated from ``results.json`` alone.

Nothing here measures anything: every number in the report is read from a result row, and each table
names the job (and run folder) it came from, so the document can be regenerated and checked.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from privacysf.benchmark.jobs import PRIVACYSF, REFERENCE, UNET
from privacysf.common.figures import dice_bars, lines, stacked_bars
from privacysf.common.runs import atomic_write

DICE_RATIO_TARGET = 0.95
PAYLOAD_SHARE_TARGET = 0.25
LATENCY_TARGET_MS = 19.0
LATENCY_TARGET = {"size": 256, "batch": 1, "device": "cpu", "threads": 2}
TRAINING_TARGET_SECONDS = 600.0
TRAINING_TARGET = {"dataset": "icbm152-tissue", "size": 128}
DEFAULT_MODE = f"{PRIVACYSF} task"


def _mean_std(values: list[float]) -> tuple[float, float]:
    array = np.asarray(values, float)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0


def _pm(values: list[float], digits: int) -> str:
    mean, std = _mean_std(values)
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def accuracy_summary(rows: list[dict]) -> dict[tuple[str, str], dict]:
    """Per (dataset, method): the seeds' test scores, pooled as mean ± std over seeds."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in rows:
        if row["kind"] == "accuracy":
            groups[(row["dataset"], row["method"])].append(row)
    return {
        key: {
            "seeds": sorted(r["seed"] for r in members),
            "dice": [r["dice"] for r in members],
            "iou": [r["iou"] for r in members],
            "hd95": [r["hd95"] for r in members],
            "assd": [r["assd"] for r in members],
            "unit": members[0]["distance_unit"],
            "runs": sorted({r["run"] for r in members}),
            "rows": members,
        }
        for key, members in sorted(groups.items())
    }


def _target(name: str, measured: str, ok: bool, miss: str) -> str:
    return f"| {name} | {measured} | {'**met**' if ok else f'**missed** ({miss})'} |"


def _targets(rows: list[dict], summary: dict, settings: dict) -> list[str]:
    out = ["| target | measured | verdict |", "|---|---|---|"]
    for dataset in sorted({d for d, _ in summary}):
        ours, unet, ref = (summary.get((dataset, m)) for m in (DEFAULT_MODE, UNET, REFERENCE))
        dice = float(np.mean(ours["dice"])) if ours else None
        if ours and unet:
            ratio = dice / np.mean(unet["dice"])
            measured = f"{dice:.3f} vs {np.mean(unet['dice']):.3f} (× {ratio:.3f})"
            miss = f"by {DICE_RATIO_TARGET - ratio:.3f}"
            out.append(
                _target(
                    f"{dataset}: Dice ≥ {DICE_RATIO_TARGET} × raw U-Net",
                    measured,
                    ratio >= DICE_RATIO_TARGET,
                    miss,
                )
            )
        if ours and ref:
            gap = dice - np.mean(ref["dice"])
            measured = f"{dice:.3f} vs {np.mean(ref['dice']):.3f}"
            out.append(_target(f"{dataset}: Dice above the reference", measured, gap > 0, f"by {-gap:.3f}"))
    payload = {r["method"]: r for r in rows if r["kind"] == "payload"}
    dtypes = {r["dataset"]: r["raw_image_dtype"] for r in rows if r.get("raw_image_dtype")}
    if not dtypes:  # no dataset measured yet: the allowance for the common stored dtypes
        dtypes = {f"raw image stored as {dtype}": dtype for dtype in ("uint8", "int16", "float32")}
    if PRIVACYSF in payload:
        p = payload[PRIVACYSF]
        for dataset, dtype in sorted(dtypes.items()):
            raw = p["size"] ** 2 * np.dtype(dtype).itemsize
            share = p["total"] / raw
            name = f"{dataset}: payload per {p['size']}² query ≤ ¼ of the raw image ({dtype}, {raw} B)"
            miss = f"{share / PAYLOAD_SHARE_TARGET:.2f} × the allowance"
            out.append(
                _target(name, f"{p['total']} B ({share:.3f} of it)", share <= PAYLOAD_SHARE_TARGET, miss)
            )
    for r in rows:
        if (
            r["kind"] == "latency"
            and r["method"] == PRIVACYSF
            and all(r[k] == v for k, v in LATENCY_TARGET.items())
        ):
            name = f"encode + map + decode ≤ {LATENCY_TARGET_MS:g} ms per 256² image, batch 1, 2 CPU threads"
            ms = r["total_ms"]
            out.append(
                _target(name, f"{ms:.1f} ms", ms <= LATENCY_TARGET_MS, f"by {ms - LATENCY_TARGET_MS:.1f} ms")
            )
    timed = [
        r["pipeline_seconds"]
        for r in summary.get((TRAINING_TARGET["dataset"], DEFAULT_MODE), {}).get("rows", [])
    ]
    if timed and settings["size"] == TRAINING_TARGET["size"]:
        median = float(np.median(timed))
        name = f"full pipeline training on {TRAINING_TARGET['dataset']} at 128² ≤ 10 min"
        measured = f"{median / 60:.1f} min (median of {len(timed)} seed(s))"
        miss = f"by {(median - TRAINING_TARGET_SECONDS) / 60:.1f} min"
        out.append(_target(name, measured, median <= TRAINING_TARGET_SECONDS, miss))
    return out


def _accuracy_table(summary: dict, link: str) -> list[str]:
    out = [
        "| dataset | method | seeds | Dice | IoU | HD95 | ASSD | × raw U-Net | runs |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (dataset, method), s in summary.items():
        unet = summary.get((dataset, UNET))
        ratio = f"{np.mean(s['dice']) / np.mean(unet['dice']):.3f}" if unet else "–"
        runs = ", ".join(f"[{i + 1}]({link}{run}/metrics.json)" for i, run in enumerate(s["runs"]))
        out.append(
            f"| {dataset} | {method} | {len(s['seeds'])} | {_pm(s['dice'], 3)} | {_pm(s['iou'], 3)} | "
            f"{_pm(s['hd95'], 2)} {s['unit']} | {_pm(s['assd'], 2)} {s['unit']} | {ratio} | {runs} |"
        )
    return out


def _per_seed_table(summary: dict, seeds: list[int]) -> list[str]:
    """Dice of every method on each seed: a split that is hard for all methods shows as one column."""
    out = [
        "| dataset | method | " + " | ".join(f"seed {k}" for k in seeds) + " |",
        "|---|---|" + "---|" * len(seeds),
    ]
    for (dataset, method), s in summary.items():
        by_seed = {r["seed"]: r["dice"] for r in s["rows"]}
        cells = [f"{by_seed[k]:.3f}" if k in by_seed else "–" for k in seeds]
        out.append(f"| {dataset} | {method} | " + " | ".join(cells) + " |")
    return out


def _payload_table(rows: list[dict]) -> list[str]:
    out = ["| method | image size | up (B) | down (B) | total (B) |", "|---|---|---|---|---|"]
    for r in rows:
        if r["kind"] == "payload":
            out.append(f"| {r['method']} | {r['size']}² | {r['up']} | {r['down']} | {r['total']} |")
    return out


def _latency_table(rows: list[dict]) -> list[str]:
    out = [
        "| method | device | threads | size | batch | encode ms | map ms | decode ms | total ms | ms/image |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["kind"] == "latency":
            out.append(
                f"| {r['method']} | {r['device']} | {r['threads'] or '–'} | {r['size']}² | {r['batch']} | "
                f"{r['encode_ms']:.1f} | {r['map_ms']:.1f} | {r['decode_ms']:.1f} | {r['total_ms']:.1f} | "
                f"{r['per_image_ms']:.2f} |"
            )
    return out


def _cost_table(summary: dict) -> list[str]:
    out = [
        "| dataset | method | stage | seconds (mean of seeds) | s / epoch | peak RSS MiB | RSS growth MiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for (dataset, method), s in summary.items():
        stages: dict[str, list[dict]] = defaultdict(list)
        for row in s["rows"]:
            for stage, cost in row.get("training_cost", {}).items():
                stages[stage].append(cost)
        for stage, costs in stages.items():
            mean = {
                k: np.mean([c[k] for c in costs])
                for k in ("seconds", "seconds_per_epoch", "peak_rss_mb", "rss_growth_mb")
            }
            out.append(
                f"| {dataset} | {method} | {_stage(stage)} | {mean['seconds']:.1f} | "
                f"{mean['seconds_per_epoch']:.2f} | {mean['peak_rss_mb']:.0f} | {mean['rss_growth_mb']:.0f} |"
            )
    return out


def _stage(name: str) -> str:
    return name.replace("_", " ")


def _scaling_table(rows: list[dict], link: str) -> list[str]:
    out = [
        "| size | train share | train slices | stage | s / epoch | peak RSS MiB | RSS growth MiB | run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(
        (r for r in rows if r["kind"] == "scaling"),
        key=lambda r: (r["size"], r["train_fraction"], r["stage"]),
    ):
        out.append(
            f"| {r['size']}² | {r['train_fraction']:g} | {r['train_slices']} | {_stage(r['stage'])} | "
            f"{r['seconds_per_epoch']:.2f} | {r['peak_rss_mb']:.0f} | {r['rss_growth_mb']:.0f} | "
            f"[run]({link}{r['run']}/metrics.json) |"
        )
    return out


def _plots(rows: list[dict], summary: dict, settings: dict, figures: Path) -> list[str]:
    made = []
    datasets = sorted({d for d, _ in summary})
    methods = list(dict.fromkeys(m for _, m in summary))
    if summary:
        table = {
            m: {d: float(np.mean(summary[(d, m)]["dice"])) for d in datasets if (d, m) in summary}
            for m in methods
        }
        spread = {
            m: {d: _mean_std(summary[(d, m)]["dice"])[1] for d in datasets if (d, m) in summary}
            for m in methods
        }
        dice_bars(figures / "dice.png", table, datasets, {}, spread, "test Dice, mean ± std over seeds")
        made.append("dice.png")
    batch_one = [r for r in rows if r["kind"] == "latency" and r["batch"] == 1]
    if batch_one:
        labels = [
            f"{'PSF' if r['method'] == PRIVACYSF else 'ref'} {r['size']}² {r['device']}" for r in batch_one
        ]
        stacks = {stage: [r[f"{stage}_ms"] for r in batch_one] for stage in ("encode", "map", "decode")}
        stacked_bars(figures / "latency.png", labels, stacks, "ms per query (median)", "latency at batch 1")
        made.append("latency.png")
    scaling = [r for r in rows if r["kind"] == "scaling"]
    for axis, fixed, value, name, xlabel in (
        ("size", "train_fraction", 1.0, "scaling_size.png", "image side (pixels)"),
        ("train_slices", "size", settings["size"], "scaling_data.png", "training slices"),
    ):
        keep = [r for r in scaling if r[fixed] == value]
        series: dict[str, tuple[list[float], list[float]]] = {}
        for r in sorted(keep, key=lambda r: r[axis]):
            xs, ys = series.setdefault(_stage(r["stage"]), ([], []))
            xs.append(r[axis])
            ys.append(r["seconds_per_epoch"])
        if any(len(xs) > 1 for xs, _ in series.values()):
            lines(figures / name, series, xlabel, "seconds per epoch", f"training time vs {xlabel}")
            made.append(name)
    return made


def write_benchmarks(
    results: dict, md_path: Path, figures: Path, link_prefix: str, results_link: str
) -> None:
    """Write the report of ``results`` to ``md_path`` and its plots to ``figures``."""
    rows, settings = results["rows"], results["settings"]
    summary = accuracy_summary(rows)
    done = {r["job"] for r in rows}
    missing = [j for j in results["planned"] if j not in done]
    plots = _plots(rows, summary, settings, figures)
    fig_link = figures.relative_to(md_path.parent).as_posix()
    first = rows[0] if rows else {}
    text = [
        f"# Benchmarks ({results['suite']} suite)",
        "",
        f"Generated by `privacysf bench run {results['suite']}` from [{results_link}]({results_link}); "
        "every number below is a field of a row there, and each row names its job, the command that reruns "
        "it alone, its run folder and config, the machine and the library versions.",
        "",
        f"Suite: {settings['description']}. Accuracy jobs: {', '.join(settings['datasets'])} at "
        f"{settings['size']}², {settings['epochs']} epochs"
        + "".join(f" ({d}: {e})" for d, e in settings.get("epochs_by_dataset", {}).items())
        + f", seeds {', '.join(map(str, settings['seeds']))}, "
        f"{settings['threads']} CPU threads.",
    ]
    if first:
        m, v = first["machine"], first["versions"]
        text += [
            "",
            f"Machine: {m['cpu']}, {m['cores']} cores, device {m['device']}"
            + (f" ({m['gpu']})" if m.get("gpu") else "")
            + f"; {', '.join(f'{k} {val}' for k, val in v.items())}.",
        ]
    if missing:
        text += [
            "",
            f"**Partial run: {len(missing)} of {len(results['planned'])} planned jobs have no result yet** "
            f"(resume with `privacysf bench run {results['suite']} --resume RUN_FOLDER`): "
            + ", ".join(f"`{j}`" for j in missing),
        ]
    sections = [
        ("Targets", "", _targets(rows, summary, settings), []),
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
        ("Payload per query", "Real wire messages, headers included.", _payload_table(rows), []),
        (
            "Latency",
            "Median of the timed repetitions after warm-up, per stage, wire messages included; total is the "
            "sum of the stage medians. Networks are untrained (the arithmetic does not depend on weights).",
            _latency_table(rows),
            ["latency.png"],
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
    for title, intro, table, pictures in sections:
        text += ["", f"## {title}", "", *([intro, ""] if intro else []), *table]
        text += [f"\n![{name}]({fig_link}/{name})" for name in pictures if name in plots]
    atomic_write(md_path, lambda tmp: tmp.write_text("\n".join(text) + "\n"))
