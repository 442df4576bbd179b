"""Retrain only the server's mapper on a finished fit's center, once per setting, and score each.

The center (its trained codecs, as served) stays fixed, so the rows differ in the mapper alone: a
change of Dice between them is the mapper's, not a retrained center's.

    PYTHONPATH=src .venv/bin/python tools/remap.py runs/<fit-run> mapper.res_units=1 mapper.res_units=2

Each setting is a comma-separated list of ``--set`` overrides; mappers are written under ``--out``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from privacysf.common.torchutil import seed_everything
from privacysf.data.prepare import prepare
from privacysf.metrics.evaluation import dice_3d, score_test
from privacysf.workflows.fit import reload_center
from privacysf.workflows.inprocess import fit_server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a privacysf fit run folder with its center models")
    parser.add_argument("settings", nargs="+", help="comma-separated --set overrides, one mapper each")
    parser.add_argument("--out", type=Path, default=Path("runs/remap"), help="where the mappers go")
    args = parser.parse_args()
    print("| setting | val code MSE | 3-D Dice | slice Dice | mapper s |\n|---|---|---|---|---|")
    for setting in args.settings:
        cfg, center = reload_center(args.run)
        cfg = cfg.override(["train.progress=false", *setting.split(",")])
        data = prepare(cfg.data)
        seed_everything(cfg.train.seed, cfg.train.threads)
        server, fit, _ = fit_server(cfg, center, data.train, data.val, args.out / setting.replace(",", "_"))
        test = score_test(center.segment(server, data.test.images), data)
        volume = dice_3d(test)
        print(
            f"| {setting} | {-fit.best_score:.4f} | {volume['mean'] if volume else float('nan'):.3f} | "
            f"{test['mean']['dice']['mean']:.3f} | {fit.seconds:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
