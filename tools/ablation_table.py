"""One augmentation-study table per dataset from several ``privacysf ablate`` runs.

A study split into runs (one seed each, so two can share a machine) is read back as one: the cells
of every run of a dataset are pooled, sorted by training share and seed, and tabulated by
:func:`privacysf.workflows.ablation_table.ablation_markdown`. The runs of one dataset must have
compared the same centers and policies.

    .venv/bin/python tools/ablation_table.py runs/*-ablation-* --out docs/benchmarks/augmentation.md
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

from privacysf.config import ExperimentConfig
from privacysf.workflows.ablation_table import ablation_markdown


def pooled_studies(runs: list[Path]) -> list[tuple[dict, ExperimentConfig]]:
    """(pooled summary, config of its first run) per dataset, in the order datasets first appear."""
    by_dataset: dict[str, list[tuple[dict, ExperimentConfig]]] = defaultdict(list)
    for run in runs:
        if not (run / "ablation.json").is_file():
            print(f"{run}: no ablation.json (no cell finished yet), left out", file=sys.stderr)
            continue
        summary = json.loads((run / "ablation.json").read_text())
        by_dataset[summary["dataset"]].append((summary, ExperimentConfig.load(run / "config.json")))
    studies = []
    for dataset, parts in by_dataset.items():
        first = parts[0][1]
        for _, cfg in parts[1:]:
            centers = (cfg.ablation.centers(cfg.codec), cfg.ablation.policies)
            if centers != (first.ablation.centers(first.codec), first.ablation.policies):
                raise SystemExit(f"{dataset}: the runs compared different centers or policies")
        cells = sorted(
            (cell for summary, _ in parts for cell in summary["cells"]),
            key=lambda cell: (cell["fraction"], cell["seed"]),
        )
        studies.append(({**parts[0][0], "cells": cells}, parts[0][1]))
    return studies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+", help="ablate run folders (each with ablation.json)")
    parser.add_argument("--out", type=Path, help="also write the tables here")
    args = parser.parse_args()
    text = "\n".join(ablation_markdown(summary) for summary, _ in pooled_studies(args.runs))
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
