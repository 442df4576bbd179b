"""One augmentation-study table per dataset from several ``privacysf ablate`` runs.

A study split into runs (one seed each, so two can share a machine) is read back as one: the cells
of every run of a dataset are pooled, sorted by training share and seed, and tabulated by
:func:`privacysf.workflows.ablation_table.ablation_markdown`. The runs of one dataset must have
compared the same centers and policies, or share the one center ``--center`` names. With ``--join``,
runs that trained other centers on the same splits (a later study of a new center) are merged cell
by cell instead, the first run's centers first: the new center's changes are then paired with the
old reference on the same test cases (:func:`privacysf.workflows.ablation_table.join_cells` refuses
cells of other splits, a center trained twice and a seed one run lacks).

    .venv/bin/python tools/ablation_table.py runs/*-ablation-* --out docs/benchmarks/augmentation.md
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

from privacysf.config import ExperimentConfig
from privacysf.workflows.ablation_table import ablation_markdown, join_cells


def _only(cell: dict, center: str, run: Path) -> dict:
    """``cell`` with ``center``'s rows and errors alone."""
    if center not in cell["centers"]:
        raise SystemExit(f"{run}: no center {center!r} (it has {', '.join(cell['centers'])})")
    return {
        **cell,
        "centers": {center: cell["centers"][center]},
        "equivariance": {center: cell.get("equivariance", {}).get(center, [])},
    }


def pooled_studies(
    runs: list[Path], center: str | None = None, join: bool = False
) -> list[tuple[dict, ExperimentConfig]]:
    """(pooled summary, config of its first run) per dataset, in the order datasets first appear.

    With ``center``, each run keeps that center alone, so runs that trained other centers beside it
    (a study extended later by more seeds of one center) pool on what they share."""
    by_dataset: dict[str, list[tuple[dict, ExperimentConfig]]] = defaultdict(list)
    for run in runs:
        if not (run / "ablation.json").is_file():
            print(f"{run}: no ablation.json (no cell finished yet), left out", file=sys.stderr)
            continue
        summary = json.loads((run / "ablation.json").read_text())
        if center is not None:
            summary["cells"] = [_only(cell, center, run) for cell in summary["cells"]]
        by_dataset[summary["dataset"]].append((summary, ExperimentConfig.load(run / "config.json")))
    studies = []
    for dataset, parts in by_dataset.items():
        first = parts[0][1]
        # joined runs train other centers, with their own policies, by design; join_cells checks splits
        for _, cfg in [] if join else parts[1:]:
            if cfg.ablation.policies != first.ablation.policies or (
                center is None and cfg.ablation.centers(cfg.codec) != first.ablation.centers(first.codec)
            ):
                raise SystemExit(f"{dataset}: the runs compared different centers or policies")
        cells = [cell for summary, _ in parts for cell in summary["cells"]]
        try:
            cells = join_cells(cells) if join else cells
        except ValueError as problem:
            raise SystemExit(f"{dataset}: {problem}") from problem
        cells = sorted(cells, key=lambda cell: (cell["fraction"], cell["seed"]))
        studies.append(({**parts[0][0], "cells": cells}, parts[0][1]))
    return studies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+", help="ablate run folders (each with ablation.json)")
    parser.add_argument("--out", type=Path, help="also write the tables here")
    parser.add_argument(
        "--center", help="pool this center alone (a name in ablation.json, e.g. '0, circular')"
    )
    parser.add_argument(
        "--join", action="store_true", help="merge runs of other centers on the same splits, cell by cell"
    )
    args = parser.parse_args()
    studies = pooled_studies(args.runs, args.center, args.join)
    text = "\n".join(ablation_markdown(summary) for summary, _ in studies)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
