"""Print the Markdown tables of docs/results.md from `privacysf fit` / `ablate` run folders.

    python tools/collect_results.py RUNS_FOLDER

Every figure it prints is read from a run folder's metrics.json / ablation.json, so each table row
traces back to the run (and its config.json) that produced it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from privacysf.workflows.fit_report import ratio_text


def fmt(m: dict, key: str, digits: int) -> str:
    return f"{m[key]['mean']:.{digits}f} ± {m[key]['std']:.{digits}f}"


def main(folder: Path) -> None:
    fits = sorted(
        folder.glob("*-privacysf-*/metrics.json"),
        key=lambda p: (json.loads(p.read_text())["dataset"], "autoencoder" in p.parent.name),
    )
    print(
        "| dataset | method | Dice | IoU | HD95 | ASSD | ceiling | ratio vs U-Net | payload B (raw B) | run |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    seen_unet = set()
    for path in fits:
        metrics = json.loads(path.read_text())
        run = path.parent.name
        p = metrics["privacysf"]
        t = p["test"]["mean"]
        unit = p["test"].get("distance_unit", "mm")
        pay = p["payload_bytes_per_query"]
        print(
            f"| {metrics['dataset']} | Privacy-SF `{p['mode']}` | {fmt(t, 'dice', 3)} | "
            f"{t['iou']['mean']:.3f} | {fmt(t, 'hd95', 2)} {unit} | {fmt(t, 'assd', 2)} {unit} | "
            f"{p['mask_codec_ceiling_dice']:.3f} | "
            f"{ratio_text(metrics.get('dice_ratio_vs_unet'))} | "
            f"{pay['total']} ({p['raw_image_bytes']}) | "
            f"`{run}` |"
        )
        if "raw_unet" in metrics and metrics["dataset"] not in seen_unet:
            seen_unet.add(metrics["dataset"])
            u = metrics["raw_unet"]["test"]["mean"]
            print(
                f"| {metrics['dataset']} | raw U-Net | {fmt(u, 'dice', 3)} | {u['iou']['mean']:.3f} | "
                f"{fmt(u, 'hd95', 2)} {unit} | {fmt(u, 'assd', 2)} {unit} | | 1 | | `{run}` |"
            )
    for path in sorted(folder.glob("*-ablation-*/ablation.json")):
        summary = json.loads(path.read_text())
        print(f"\nAblation on {summary['dataset']} ({summary['mode']} mode), run `{path.parent.name}`:\n")
        print((path.parent / "ablation.md").read_text().split("\n", 2)[2])


if __name__ == "__main__":
    main(Path(sys.argv[1]))
