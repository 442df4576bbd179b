"""How finely must the codes travel? A fitted run's test Dice with both codes rounded coarser.

Each run's test slices are sent as queries with the run's own networks as trained, and both codes
of a query, the image code up and the mapper's mask code down, are rounded to ``n`` evenly spaced
values in [-1, 1] (``n = 255`` is the int8 wire's grid; 16 and 4 are the ``uint4`` and ``uint2``
wire dtypes). Nothing is retrained for the coarser rounding, so a value count that keeps the Dice
here is one a codec trained through that rounding (as ``codec.wire_dtype`` trains them) should keep
too. Bytes per 256² query pack each value in the fewest of 1, 2, 4 or 8 bits that hold ``n`` levels,
plus the two headers.

    PYTHONPATH=src .venv/bin/python tools/code_bits.py RUN [RUN ...] [--values 255 16 8 4 3]

Runs with a key, per-query shifts or encrypted queries are refused: this measures plain codes.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np
import torch

from privacysf.center.codecs import decode_masks, encode_images
from privacysf.common.markdown import Markdown
from privacysf.config import CodecConfig
from privacysf.data.prepare import prepare
from privacysf.errors import ConfigError
from privacysf.exchange.wire import SCAN_ORDER, WireValues, encode_header, evenly_spaced
from privacysf.metrics.evaluation import dice_3d, score_test
from privacysf.workflows.fit import reload

QUERY_SIDE = 256


def levels(values: int) -> WireValues:
    """``values`` evenly spaced numbers spanning [-1, 1], packed at ``ceil(log2 values)`` bits, rounded
    to the next width that packs whole into bytes (1, 2, 4 or 8); at 16 and 4 values, the ``uint4`` and
    ``uint2`` wire dtypes."""
    bits = next(b for b in (1, 2, 4, 8) if 2**b >= values)
    return evenly_spaced(values, bits)


def rounded(codes: np.ndarray, values: int) -> np.ndarray:
    """``codes`` as sent at ``values`` evenly spaced numbers."""
    return levels(values).as_sent(torch.from_numpy(codes)).numpy()


def query_bytes(values: int, codec: CodecConfig) -> int:
    """Bytes both ways of a 256² query at ``values`` evenly spaced numbers, with each message's prefix
    and header as the wire writes them."""
    side = QUERY_SIDE // codec.downsample
    total = 0
    for kind, channels in (("image", codec.image_channels), ("mask", codec.mask_channels)):
        packing = levels(values)
        name = "int8" if packing.bits == 8 else f"uint{packing.bits}"  # a header of the same length
        header = encode_header(kind, name, (1, side * side, channels), (side, side), SCAN_ORDER)
        total += len(header) + packing.body_bytes(side * side * channels)
    return total


def run_dice(run: Path, counts: list[int]) -> dict:
    """3-D per-case Dice of ``run``'s test split at each value count, and what the run is."""
    cfg, center, server = reload(run)
    if cfg.key.enabled or cfg.key.per_query_shift or cfg.encryption.enabled:
        raise ConfigError(f"{run} sends keyed, shifted or encrypted codes; this tool measures plain ones")
    data = prepare(cfg.data)
    images = encode_images(center.image_encoder, data.test.images, center.device)
    dice = {}
    for values in counts:
        mapped = server.predict_tokens(torch.from_numpy(rounded(images, values))).cpu().numpy()
        labels = decode_masks(center.mask_codec, rounded(mapped, values), center.grid, center.device)
        dice[values] = dice_3d(score_test(labels, data))["mean"]
    return {"dataset": data.info.name, "seed": cfg.data.seed, "dice": dice, "codec": cfg.codec}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--values", type=int, nargs="+", default=[255, 16, 8, 4, 3])
    args = parser.parse_args()
    if any(not 2 <= v <= 256 for v in args.values):
        parser.error("--values must each lie in 2..256 (two values say something; 256 fill a byte)")
    rows = []
    for run in args.runs:
        result = run_dice(run, args.values)
        rows.append(result)
        print(
            result["dataset"], result["seed"], {v: round(d, 3) for v, d in result["dice"].items()}, flush=True
        )
    codecs = {(r["codec"].downsample, r["codec"].image_channels, r["codec"].mask_channels) for r in rows}
    if len(codecs) > 1:
        parser.error(f"the runs' codecs differ ({sorted(codecs)}): the bytes column needs one")
    base = args.values[0]
    table = [[r["dataset"], r["seed"], *(r["dice"][v] for v in args.values)] for r in rows]
    changes = [statistics.mean(r["dice"][v] - r["dice"][base] for r in rows) for v in args.values]
    worst = [min(r["dice"][v] - r["dice"][base] for r in rows) for v in args.values]
    sizes = [str(query_bytes(v, rows[0]["codec"])) for v in args.values]
    summary = [["mean change", "", *changes], ["worst change", "", *worst], ["B per 256² query", "", *sizes]]
    print(
        Markdown()
        .paragraph(f"3-D per-case Dice, both codes rounded to n values; changes against n = {base}:")
        .table(
            ["dataset", "seed", *(f"{v} values" for v in args.values)],
            [*table, *summary],
            ["", "", *[".3f"] * len(args.values)],
        )
        .text()
    )


if __name__ == "__main__":
    main()
