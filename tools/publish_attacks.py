"""Copy an attack-suite run's report, results and pictures (no checkpoints, no keys) into docs/privacy/.

    python tools/publish_attacks.py RUN_FOLDER [RUN_FOLDER ...]
    python tools/publish_attacks.py --combine NAME RUN_FOLDER [RUN_FOLDER ...]

Each run lands in ``docs/privacy/<run folder name>/``: ``attacks.md`` and the curve (written from
``results.json`` by the current report code, so a stopped run publishes the settings it finished),
``results.json``, ``config.json``, ``data.json`` and the reconstruction pictures, so each figure
in docs/threat-model.md traces back to the run that produced it. It also prints the compact summary
table used in docs/threat-model.md. With ``--combine NAME``, runs of one dataset (same split, seed and
epochs, different settings) are also merged into ``docs/privacy/NAME/``: one attack table and one
privacy–utility curve over every setting, each linking to its own run's reconstructions; where runs
repeat a setting, the later run's row is kept (a folder already under docs/privacy/ is combined as
published).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from privacysf.attacks.report import TARGET_K, inversion_at, leakage_auc, ssim_gain, write_attack_report
from privacysf.config import ExperimentConfig

DOCS = Path(__file__).resolve().parents[1] / "docs" / "privacy"
KEPT = ("results.json", "config.json", "data.json")


def publish(run: Path) -> Path:
    target = DOCS / run.name
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for name in KEPT:
        shutil.copy2(run / name, target / name)
    for picture in run.glob("*/attacks.png"):
        (target / picture.parent.name).mkdir()
        shutil.copy2(picture, target / picture.parent.name / picture.name)
    (target / "RUN").write_text(f"{run.name}\n")
    results = json.loads((run / "results.json").read_text())
    write_attack_report(target, ExperimentConfig.load(run / "config.json"), results)
    return target


def combine(name: str, runs: list[Path]) -> tuple[Path, dict]:
    """One report over the settings of several published runs (their own folders stay as they are)."""
    loaded = [json.loads((r / "results.json").read_text()) for r in runs]
    if len({(res["dataset"], json.dumps(res["split"], sort_keys=True)) for res in loaded}) != 1:
        raise SystemExit("--combine needs runs of one dataset on one split")
    merged = {**loaded[0], "seconds": sum(res.get("seconds", 0) for res in loaded)}
    latest: dict[str, dict] = {}  # a later run of a setting replaces an earlier one (e.g. after a fix)
    for run, res in zip(runs, loaded, strict=True):
        for row in res["settings"]:
            latest.pop(row["setting"], None)
            latest[row["setting"]] = {**row, "folder": f"../{run.name}/{row['folder']}"}
    merged["settings"] = list(latest.values())
    target = DOCS / name
    target.mkdir(parents=True, exist_ok=True)
    (target / "RUNS").write_text("".join(f"{r.name}\n" for r in runs))
    write_attack_report(target, ExperimentConfig.load(runs[0] / "config.json"), merged)
    return target, merged


def summary(results: dict) -> str:
    """One row per setting: utility, the k≈100 inversions, the shadow attack and membership."""
    lines = [
        "| setting | Dice (× U-Net) | image inversion k≈100 SSIM (gain) | image shadow SSIM | "
        "mask inversion k≈100 Dice | re-id top-1 from codes | MIA max(AUC, 1 − AUC) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results["settings"]:
        a, image, mask = r["attacks"], inversion_at(r, TARGET_K), inversion_at(r, TARGET_K, "mask")
        mia = max(leakage_auc(e) for e in a["membership"].values())
        gain = ssim_gain(image, image["baseline_mean_image"])
        reid = f"{a['encoded']['reid_top1']:.2f} (chance {a['encoded']['reid_chance']:.2f})"
        shadow = a["image"]["shadow codec"]["ssim"]
        lines.append(
            f"| {r['setting']} | {r['dice']:.3f} ({r['dice_ratio_vs_unet']:.2f}) | {image['ssim']:.3f} "
            f"({gain:.2f}) | {shadow:.3f} | {mask['dice']:.3f} | {reid} | {mia:.2f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    args = sys.argv[1:]
    name = None
    if args[:1] == ["--combine"]:
        name, args = args[1], args[2:]
    published = []
    for folder in map(Path, args):
        already = folder.resolve().parent == DOCS  # a run published before: combine it as it is
        published.append(folder.resolve() if already else publish(folder))
        print(published[-1])
        print(summary(json.loads((folder / "results.json").read_text())))
    if name:
        target, merged = combine(name, published)
        print(target)
        print(summary(merged))
