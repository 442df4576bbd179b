"""Retrain only the server's mapper on a finished fit's center, once per setting, and score each.

The center (its trained codecs, as served) stays fixed, so the rows differ in the mapper alone: a
change of Dice between them is the mapper's, not a retrained center's.

    PYTHONPATH=src .venv/bin/python tools/remap.py runs/<fit-run> mapper.res_units=1 mapper.res_units=2

Each setting is a comma-separated list of ``--set`` overrides of the mapper or its training (not of
``data`` or ``codec``, which the fixed center fixes); mappers are written under ``--out``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from privacysf.data.prepare import prepare
from privacysf.workflows.ablate import remap_scores
from privacysf.workflows.fit import reload_center


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a privacysf fit run folder with its center models")
    parser.add_argument("settings", nargs="+", help="comma-separated --set overrides, one mapper each")
    parser.add_argument("--out", type=Path, default=Path("runs/remap"), help="where the mappers go")
    args = parser.parse_args()
    base, center = reload_center(args.run)  # loaded and its data prepared once for every setting
    data = prepare(base.data)
    print("| setting | val code MSE | 3-D Dice | slice Dice | mapper s |\n|---|---|---|---|---|")
    for setting in args.settings:
        cfg = base.override(["train.progress=false", *setting.split(",")])
        if (cfg.data, cfg.codec) != (base.data, base.codec):
            raise SystemExit(f"{setting}: changes data.* or codec.*, which the run's fixed center fixes")
        scores = remap_scores(cfg, center, center, data, args.out / setting.replace(",", "_"))
        dice = scores["dice_3d"]
        print(
            f"| {setting} | {scores['best_val_mse']:.4f} | {'-' if dice is None else f'{dice:.3f}'} | "
            f"{scores['slice_dice']:.3f} | {scores['mapper_seconds']:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
