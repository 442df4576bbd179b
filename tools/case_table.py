"""Per dataset and seed: 3-D per-case foreground Dice of Privacy-SF, the raw U-Net and the mask-codec
ceiling, from ``privacysf fit`` run folders (issue 16's target table).

    .venv/bin/python tools/case_table.py runs/ [more folders]
    .venv/bin/python tools/case_table.py --timing runs/   # training seconds per stage instead
    .venv/bin/python tools/case_table.py --encrypted runs/   # encrypted queries against plain codes
    .venv/bin/python tools/case_table.py runs/ --against old-runs/   # paired with the same pairs there

With ``--timing`` each row gives the seconds of every training stage, their sum and that sum over the
raw U-Net's training on the same split in the same run (issue 17's "<= 3 x" target): the stages and
the U-Net ran in one process with the same thread count, so the ratio is fair even where the
absolute seconds depend on what else the machine was doing.

With ``--encrypted`` the runs made with ``encryption.enabled`` give the test Dice of their encrypted
queries beside the same mapper's on plain codes, with seconds and bytes per query.

With ``--against FOLDER [FOLDER ...]`` each dataset-seed pair run in both places gives Privacy-SF's
Dice and the ceiling there ("before") and here, and the mean change over the pairs (the first run of
a pair where the folders hold several).

Each figure is read from a run's ``metrics.json`` (``per_case_3d.foreground_only``: each test case's
slices stacked into one volume, classes the case holds averaged, then the mean over cases). A run
made before the ceiling was scored per case shows ``-`` there.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from privacysf.metrics.evaluation import dice_3d
from privacysf.workflows.ablation_table import t_interval

RATIO_TARGET = 0.95


def _dice_3d(scored: dict | None) -> float | None:
    dice = dice_3d(scored)
    return dice["mean"] if dice else None


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def row(run: Path) -> dict:
    metrics = json.loads((run / "metrics.json").read_text())
    config = json.loads((run / "config.json").read_text())
    p = metrics["privacysf"]
    ceiling = p.get("mask_codec_ceiling_scores_by_wire_dtype", {}).get(p["wire_dtype"])
    return {
        "dataset": metrics["dataset"],
        "seed": config["data"]["seed"],
        "ours": _dice_3d(p["test"]),
        "unet": _dice_3d(metrics.get("raw_unet", {}).get("test")),
        "ceiling": _dice_3d(ceiling),
        "run": run.name,
        "seconds": p["training_seconds"],
        "unet_seconds": metrics.get("raw_unet", {}).get("training_seconds"),
        "encrypted": p.get("encrypted_queries"),
    }


def print_dice(rows: list[dict]) -> None:
    print("| dataset | seed | Privacy-SF | raw U-Net | ratio | ceiling | run |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = r["ours"] / r["unet"] if r["ours"] is not None and r["unet"] else None
        verdict = "" if ratio is None else (" ✓" if ratio >= RATIO_TARGET else " ✗")
        print(
            f"| {r['dataset']} | {r['seed']} | {_cell(r['ours'])} | {_cell(r['unet'])} | "
            f"{_cell(ratio)}{verdict} | {_cell(r['ceiling'])} | {r['run']} |"
        )


def print_timing(rows: list[dict]) -> None:
    print(
        "| dataset | seed | mask codec s | image encoder s | mapper s | all stages s "
        "| raw U-Net s | × U-Net |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        s = r["seconds"]
        total = s["center_total"] + s["server_mapper"]
        unet = r["unet_seconds"]
        print(
            f"| {r['dataset']} | {r['seed']} | {s['mask_codec']:.0f} | {s['image_encoder']:.0f} | "
            f"{s['server_mapper']:.0f} | {total:.0f} | {_cell_seconds(unet)} | "
            f"{_cell(total / unet if unet else None)} |"
        )


def print_encrypted(rows: list[dict]) -> None:
    print(
        "| dataset | seed | queries | Dice, encrypted queries | Dice, same mapper on plain codes "
        "| pixels labelled differently | s per query | bytes up | bytes down |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if not (e := r["encrypted"]):
            continue
        pay = e["bytes_per_query"]
        print(
            f"| {r['dataset']} | {r['seed']} | {e['queries']} | {e['test_dice']:.3f} | "
            f"{e['plaintext_test_dice']:.3f} | {e['labels_differing_from_plaintext']:.3%} | "
            f"{e['seconds_per_query']:.2f} | {pay['up']:,} | {pay['down']:,} |"
        )


def print_pairs(rows: list[dict], before: list[dict]) -> None:
    earlier = {}
    for r in before:
        earlier.setdefault((r["dataset"], r["seed"]), r)
    print("| dataset | seed | Privacy-SF before | now | change | ceiling before | now |")
    print("|---|---|---|---|---|---|---|")
    changes = []
    for r in rows:
        b = earlier.get((r["dataset"], r["seed"]))
        if b is None or r["ours"] is None or b["ours"] is None:
            continue
        changes.append(r["ours"] - b["ours"])
        print(
            f"| {r['dataset']} | {r['seed']} | {_cell(b['ours'])} | {_cell(r['ours'])} | "
            f"{changes[-1]:+.3f} | {_cell(b['ceiling'])} | {_cell(r['ceiling'])} |"
        )
    if changes:
        higher = sum(c > 0 for c in changes)
        mean, low, high = t_interval(changes)
        print(
            f"\n{len(changes)} pairs: mean change {mean:+.3f} [95 % t-interval {low:+.3f}, {high:+.3f}], "
            f"median {statistics.median(changes):+.3f}, higher now on {higher}"
        )


def _runs(folders: list[Path]) -> list[dict]:
    runs = sorted({m.parent for f in folders for m in f.glob("*-privacysf-task-*/metrics.json")})
    return sorted((row(r) for r in runs), key=lambda r: (r["dataset"], r["seed"]))


def _cell_seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", type=Path, nargs="+")
    table = parser.add_mutually_exclusive_group()
    table.add_argument("--timing", action="store_true", help="training seconds per stage, not Dice")
    table.add_argument("--encrypted", action="store_true", help="encrypted queries against plain codes")
    table.add_argument("--against", type=Path, nargs="+", help="folders of earlier runs: paired Dice changes")
    args = parser.parse_args()
    rows = _runs(args.folders)
    if args.against:
        print_pairs(rows, _runs(args.against))
        return
    printer = print_timing if args.timing else print_encrypted if args.encrypted else print_dice
    printer(rows)


if __name__ == "__main__":
    main()
