"""``privacysf ablate``: the effect of each server-side code augmentation on Dice.

The center's codecs are trained once; the server mapper is then retrained on the same codes with no
augmentation, with each augmentation alone, and with the configured default set minus each member,
so every row differs from its reference in one switch only.
"""

from __future__ import annotations

from pathlib import Path

from privacysf.center.pipeline import train_center
from privacysf.common.runs import write_json, write_text
from privacysf.common.torchutil import seed_everything
from privacysf.config import AUGMENTATIONS as SWITCHES
from privacysf.config import AugmentConfig, ExperimentConfig
from privacysf.metrics.evaluation import score_test
from privacysf.workflows.inprocess import fit_server
from privacysf.workflows.session import open_run

PROBABILITY = 0.5


def variants(default: AugmentConfig) -> dict[str, AugmentConfig]:
    off = default.updated(**{name: 0.0 for name in SWITCHES})
    rows = {"none": off}
    rows.update({f"+{name}": off.updated(**{name: PROBABILITY}) for name in SWITCHES})
    enabled = [name for name in SWITCHES if getattr(default, name) > 0]
    if enabled:
        rows["default"] = default
        rows.update({f"default -{name}": default.updated(**{name: 0.0}) for name in enabled})
    return rows


def run_ablation(cfg: ExperimentConfig) -> tuple[Path, dict]:
    session = open_run(cfg, "ablation")
    device, data, run_dir = session.device, session.data, session.run_dir
    center, _ = train_center(cfg, data.train, data.val, data.info.num_classes, device, run_dir)
    served = center.serving()  # each variant scored as `privacysf segment` runs the center
    results = {}
    for name, augment in variants(cfg.augment).items():
        seed_everything(cfg.train.seed, cfg.train.threads)
        server, fit_result, _ = fit_server(
            cfg.updated(augment=augment),
            center,
            data.train,
            data.val,
            run_dir / "variants" / name.replace(" ", "_"),
        )
        test = score_test(served.segment(server, data.test.images), data)
        results[name] = {
            "augment": augment.model_dump(),
            "dice": test["mean"]["dice"],
            "hd95": test["mean"]["hd95"],
            "best_val_mse": -fit_result.best_score,
        }
        print(f"  {name:22s} Dice {test['mean']['dice']['mean']:.4f}", flush=True)
    summary = {"dataset": data.info.name, "mode": cfg.codec.image_mode, "results": results}
    write_json(run_dir / "ablation.json", summary)
    reference = results["none"]["dice"]["mean"]
    lines = [
        f"# Augmentation ablation on {data.info.name} ({cfg.codec.image_mode} mode)",
        "",
        "| variant | test Dice | Δ vs none | val code MSE |",
        "|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['dice']['mean']:.4f} ± {r['dice']['std']:.4f} | "
            f"{r['dice']['mean'] - reference:+.4f} | {r['best_val_mse']:.5f} |"
        )
    write_text(run_dir / "ablation.md", "\n".join(lines) + "\n")
    return run_dir, summary
