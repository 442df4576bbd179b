"""Copy an attack-suite run's report, results and pictures (no checkpoints, no keys) into docs/privacy/.

    python tools/publish_attacks.py RUN_FOLDER [RUN_FOLDER ...]

Each run lands in ``docs/privacy/<run folder name>/``: ``attacks.md`` and the curve (written from
``results.json`` by the current report code, so a stopped run publishes the settings it finished),
``results.json``, ``config.json``, ``data.json`` and the reconstruction pictures, so each figure
in docs/threat-model.md traces back to the run that produced it. It also prints the compact summary
table used in docs/threat-model.md.
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
    for folder in sys.argv[1:]:
        print(publish(Path(folder)))
        print(summary(json.loads((Path(folder) / "results.json").read_text())))
