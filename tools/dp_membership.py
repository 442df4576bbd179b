"""Membership inference against the server's mapper with and without DP-SGD, with Dice beside it.

The center's codecs are trained once; the mapper is then trained on the same uploaded codes under each
setting (mapper kind × DP noise multiplier), and each is scored on the test split (Dice, 3-D Dice)
and attacked: loss-threshold and shadow-model membership inference
(:func:`privacysf.attacks.membership.membership_attacks`), members being training pairs and
non-members test pairs. The raw U-Net trained on the same split gives Dice's yardstick.

Use a dataset whose test cases come from the same distribution as its training cases (the phantom:
every case drawn by one generator), so the AUC measures membership, not a shift between subjects.

    PYTHONPATH=src .venv/bin/python tools/dp_membership.py --out docs/benchmarks/dp_membership.md \\
        --set data.phantom_cases=400 --set train.threads=2
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from privacysf.attacks.membership import membership_attacks
from privacysf.attacks.suite import received
from privacysf.center.pipeline import train_center
from privacysf.common.markdown import Markdown
from privacysf.common.torchutil import seed_everything
from privacysf.config import ExperimentConfig
from privacysf.metrics.evaluation import dice_3d, score_test
from privacysf.nets.unet import predict_labels, train_unet
from privacysf.workflows.inprocess import fit_server
from privacysf.workflows.session import open_run

SETTINGS: dict[str, list[str]] = {
    "unet mapper": [],
    "unet mapper, DP σ=0.5": ["mapper.dp_noise=0.5"],
    "unet mapper, DP σ=1": ["mapper.dp_noise=1.0"],
    "unet mapper, DP σ=2": ["mapper.dp_noise=2.0"],
    "poly mapper": ["mapper.kind=poly"],
    "poly mapper, DP σ=1": ["mapper.kind=poly", "mapper.dp_noise=1.0"],
}
"""Mapper settings compared on one center; the poly mapper needs its own center (its task head)."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", action="append", default=[], help="config override, as in privacysf fit")
    parser.add_argument("--out", type=Path, required=True, help="markdown table; rows go beside it as .json")
    args = parser.parse_args()
    base = ExperimentConfig().override(["data.dataset=phantom", "train.progress=false", *args.set])
    rows = []
    centers: dict[str, tuple] = {}
    session = open_run(base, "dp-membership")
    data = session.data
    seed_everything(base.train.seed, base.train.threads)
    unet, _ = train_unet(base, data, session.device, session.run_dir / "baseline" / "unet.pt")
    unet_score = score_test(predict_labels(unet, data.test.images, session.device), data)
    for name, overrides in SETTINGS.items():
        cfg = base.override(overrides)
        kind = cfg.mapper.kind
        if kind not in centers:  # the image encoder's task head is of the mapper's kind
            seed_everything(cfg.train.seed, cfg.train.threads)
            center, _ = train_center(
                cfg, data.train, data.val, data.info.num_classes, session.device, session.run_dir / kind
            )
            centers[kind] = (center, *(received(center, part) for part in (data.train, data.val, data.test)))
        center, members, val, nonmembers = centers[kind]
        seed_everything(cfg.train.seed, cfg.train.threads)
        server, _, _ = fit_server(cfg, center, data.train, data.val, session.run_dir / kind / name)
        test = score_test(center.segment(server, data.test.images), data)
        attacks = membership_attacks(server, cfg, center.grid, center.scan, members, val, nonmembers)
        row = {
            "setting": name,
            "overrides": overrides,
            "dice": test["mean"]["dice"]["mean"],
            "dice_3d": (dice_3d(test) or {}).get("mean"),
            "dice_vs_unet": test["mean"]["dice"]["mean"] / unet_score["mean"]["dice"]["mean"],
            "epsilon": server.privacy["epsilon"] if server.privacy else None,
            "delta": server.privacy["delta"] if server.privacy else None,
            "steps": server.privacy["steps"] if server.privacy else None,
            "membership": attacks,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    summary = {
        "dataset": data.info.name,
        "train_pairs": len(data.train.images),
        "test_pairs": len(data.test.images),
        "raw_unet_dice": unet_score["mean"]["dice"]["mean"],
        "config": base.to_dict(),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(summary, indent=1) + "\n")
    markdown(summary, args.set).write(args.out)


def _auc(result: dict) -> str:
    if "auc" not in result:
        return result.get("skipped", "–")
    return f"{result['auc']:.3f} [{result['ci_low']:.3f}, {result['ci_high']:.3f}]"


def markdown(summary: dict, overrides: list[str]) -> Markdown:
    columns = ["setting", "ε (δ)", "test Dice", "× raw U-Net", "3-D Dice", "loss-threshold AUC", "shadow AUC"]
    body = [
        [
            r["setting"],
            "∞ (no DP)" if r["epsilon"] is None else f"{r['epsilon']:.2f} ({r['delta']:g})",
            f"{r['dice']:.3f}",
            f"{r['dice_vs_unet']:.3f}",
            "–" if r["dice_3d"] is None else f"{r['dice_3d']:.3f}",
            _auc(r["membership"]["loss_threshold"]),
            _auc(r["membership"]["shadow_model"]),
        ]
        for r in summary["rows"]
    ]
    return (
        Markdown()
        .paragraph(
            f"Membership inference against the server's mapper on {summary['dataset']} "
            f"(`tools/dp_membership.py {' '.join(f'--set {o}' for o in overrides)}`): "
            f"{summary['train_pairs']} training pairs (members), {summary['test_pairs']} test pairs "
            "(non-members, same generator), balanced; AUC with 95% bootstrap intervals (0.5 = chance). "
            f"Raw U-Net test Dice {summary['raw_unet_dice']:.3f}. ε is Opacus's RDP accounting of the "
            "mapper's DP-SGD steps; it covers the training pairs, not the validation pairs that chose "
            "the epoch kept, and says nothing about what the uploaded codes themselves show."
        )
        .table(columns, body)
    )


if __name__ == "__main__":
    main()
