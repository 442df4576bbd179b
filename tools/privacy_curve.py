"""One privacy–utility picture over several published attack-suite runs of one benchmark.

Each run's report (``docs/privacy/<run>/``) has its own curve; runs of different settings (key,
image mode, mapper) made on other days with other attacker budgets cannot share one report, but they
can share one picture and table if every point is put in the same units: Dice as a fraction of the
raw U-Net's on the same split, and the strongest image attack's gain in SSIM over the mean image of
the same leaked pairs (the code-free baseline). The targets of issue 15 are drawn as lines.

    PYTHONPATH=src .venv/bin/python tools/privacy_curve.py --out docs/privacy/curve \\
        unet=docs/privacy/brain-3subjects modes=docs/privacy/brain-3subjects-modes ...
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from privacysf.attacks.summary import largest, mean, pooled, rows_of, settings, strongest
from privacysf.common.figures import scatter_labelled
from privacysf.common.markdown import Markdown

DICE_TARGET = 0.95
"""Dice of a non-cryptographic setting, as a fraction of the raw U-Net's (issue 15)."""
GAIN_TARGET = 0.10
"""Largest SSIM any attack may gain over the mean image (issue 15)."""


def points(label: str, results: dict) -> list[dict]:
    """One point per setting of one run: pooled over its seeds' attacked queries."""
    found = []
    for setting in settings(results):
        rows = rows_of(results, setting)
        attack, best = strongest(rows, "image")
        baseline = pooled(rows, "image", largest(rows, "image", "mean image"))
        lookup = pooled(rows, "image", largest(rows, "image", "nearest-code lookup"))
        found.append(
            {
                "source": label,
                "setting": setting,
                "mapper": rows[0].get("mapper", ""),
                "seeds": [r["seed"] for r in rows],
                "dice": mean([r["dice"] for r in rows]),
                "dice_ratio": mean([r["dice_ratio_vs_unet"] for r in rows]),
                "strongest": attack,
                "ssim": best["mean"],
                "ssim_low": best["ci_low"],
                "ssim_high": best["ci_high"],
                "mean_image": baseline["mean"],
                "lookup": lookup["mean"],
                "gain": best["mean"] - baseline["mean"],
                "linkage": mean([r["attacks"]["linkage"]["top1"] for r in rows]),
                "linkage_chance": mean([r["attacks"]["linkage"]["chance"] for r in rows]),
            }
        )
    return found


def table(found: list[dict]) -> Markdown:
    columns = [
        "run",
        "setting (mapper)",
        "seeds",
        "Dice (× U-Net)",
        "strongest image attack",
        "SSIM [95% CI]",
        "mean image",
        "gain over mean",
        "lookup",
        "linkage top-1 (chance)",
    ]
    rows = [
        [
            p["source"],
            f"{p['setting']} ({p['mapper']})",
            ", ".join(map(str, p["seeds"])),
            f"{p['dice']:.3f} ({p['dice_ratio']:.2f})",
            p["strongest"],
            f"{p['ssim']:.3f} [{p['ssim_low']:.3f}, {p['ssim_high']:.3f}]",
            f"{p['mean_image']:.3f}",
            f"{p['gain']:+.3f}",
            f"{p['lookup']:.3f}",
            f"{p['linkage']:.2f} ({p['linkage_chance']:.2f})",
        ]
        for p in found
    ]
    return Markdown().table(columns, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for curve.png, curve.md, curve.json")
    parser.add_argument("runs", nargs="+", help="LABEL=FOLDER of a published attack run (its results.json)")
    args = parser.parse_args()
    found = []
    for item in args.runs:
        label, _, folder = item.partition("=")
        found += points(label, json.loads((Path(folder) / "results.json").read_text()))
    args.out.mkdir(parents=True, exist_ok=True)
    scatter_labelled(
        args.out / "curve.png",
        [p["gain"] for p in found],
        [p["dice_ratio"] for p in found],
        [f"{p['source']}: {p['setting']}" for p in found],
        [p["setting"].split(" / key ")[-1] for p in found],
        xlabel="strongest image attack: SSIM gain over the mean image (lower = more private)",
        ylabel="Dice × raw U-Net (same split)",
        title="privacy–utility, cross-subject brain-3subjects, 128²",
        hlines={f"target {DICE_TARGET} × U-Net": DICE_TARGET, "raw U-Net": 1.0},
        vlines={f"target gain {GAIN_TARGET}": GAIN_TARGET},
    )
    (args.out / "curve.json").write_text(json.dumps(found, indent=1) + "\n")
    (
        Markdown()
        .paragraph(
            "Every setting of the attack runs below, in common units: Dice as a fraction of the raw "
            "U-Net's on the same split (mean over seeds), and the strongest image attack's SSIM beside "
            "the mean image of the same leaked pairs, pooled over the attacked queries of every seed "
            f"(`tools/privacy_curve.py`). Targets: Dice ≥ {DICE_TARGET} × U-Net with a gain ≤ "
            f"{GAIN_TARGET}. Sources: " + "; ".join(item.replace("=", ": ", 1) for item in args.runs) + "."
        )
        .extend(table(found))
        .figure("privacy–utility", "curve.png")
        .write(args.out / "curve.md")
    )


if __name__ == "__main__":
    main()
