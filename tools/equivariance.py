"""Equivariance error of trained centers' encoders under each code transform the server can apply
(issue 19): is a flipped, shifted, spliced or mixed code the code of the flipped, shifted, spliced or
mixed image?

    .venv/bin/python tools/equivariance.py RUN [RUN ...] [--split test] [--out FILE.md]

RUN is a ``privacysf fit`` run folder with its center models. The slices are the run's own split,
prepared again from its ``config.json``; each slice is paired with the next for splice and mixup.
Prints a markdown table (and writes it, with a JSON twin, with ``--out``).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from privacysf.center.equivariance import measure
from privacysf.data.prepare import prepare
from privacysf.workflows.fit import reload_center

HEADER = (
    "| run | transform | server option | image code: relative | vs other slice "
    "| mask code: relative | vs other slice | decoded mask Dice |"
)


def _cell(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--split", choices=("train", "val", "test"), default="test")
    parser.add_argument("--out", type=Path, help="write the table here (and a .json beside it)")
    args = parser.parse_args()
    lines, records = [HEADER, "|" + "---|" * 8], []
    for run in args.runs:
        cfg, center = reload_center(run, "cpu")
        slices = getattr(prepare(cfg.data), args.split)
        penalty = f", equivariance {cfg.codec.equivariance:g}" if cfg.codec.equivariance else ""
        padding = f", {cfg.codec.padding} padding" if cfg.codec.padding != "zeros" else ""
        label = (
            f"{Path(cfg.data.dataset).name} s{cfg.data.seed}{penalty}{padding} ({len(slices.images)} slices)"
        )
        for row in measure(
            center.image_encoder, center.mask_codec, slices.images, slices.masks, cfg.codec.downsample
        ):
            records.append(
                {"run": run.name, "dataset": cfg.data.dataset, "seed": cfg.data.seed}
                | {"equivariance": cfg.codec.equivariance, "padding": cfg.codec.padding}
                | asdict(row)
            )
            lines.append(
                f"| {label} | {row.transform} | {row.server_option or '-'} | {row.image_relative:.3f} | "
                f"{row.image_vs_other_slice:.3f} | {row.mask_relative:.3f} | {row.mask_vs_other_slice:.3f} | "
                f"{_cell(row.decoded_dice)} |"
            )
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")
        args.out.with_suffix(".json").write_text(json.dumps(records, indent=1) + "\n")


if __name__ == "__main__":
    main()
