"""Mask-codec ceiling per seed and split: the mask codec alone, as ``privacysf fit`` trains it.

It prepares a dataset as ``fit`` would (default settings and any ``--set``), trains only the mask
codec on the train split (validation for early stopping) and scores the true masks of each split
through the codec and the wire, in ``codec.wire_dtype``. A codec trains in a fraction of a fit's
time, so split rules (run it on each tree) and codec settings can be compared over several seeds.

    .venv/bin/python tools/codec_ceiling.py icbm152-tissue --seeds 0 1 2
    .venv/bin/python tools/codec_ceiling.py totalseg-mr --seeds 0 --set codec.mask_steps=0
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from privacysf.center.codecs import build_image_encoder, token_grid, train_mask_codec
from privacysf.center.pipeline import Center, mask_ceiling
from privacysf.config import ExperimentConfig
from privacysf.data.prepare import prepare
from privacysf.data.preprocess import SliceSet
from privacysf.metrics import segmentation_scores

SMALL_PX = 30
"""Per class, the ceiling is also given over the test slices holding at least this many of its pixels."""


def per_class_ceiling(center: Center, test: SliceSet, class_names: list[str]) -> dict[str, dict]:
    """Each class's ceiling over the slices whose truth holds it, and over those with ≥ 30 px."""
    decoded = center.decode_message(center.mask_message(test.masks))
    scores = segmentation_scores(decoded, test.masks, len(class_names), test.spacing)
    out = {}
    for k, name in enumerate(class_names[1:], start=1):
        area = (test.masks == k).sum(axis=(1, 2))
        dice = scores.dice[:, k - 1]
        if area.any():
            big = area >= SMALL_PX
            out[name] = {
                "present": round(float(dice[area > 0].mean()), 4),
                "n": int((area > 0).sum()),
                f"ge{SMALL_PX}px": round(float(dice[big].mean()), 4) if big.any() else None,
                f"n_ge{SMALL_PX}px": int(big.sum()),
            }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="section.key=value")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    for seed in args.seeds:
        settings = [f"data.dataset={args.dataset}", f"data.seed={seed}", f"train.seed={seed}"]
        cfg = ExperimentConfig().override([*settings, *args.overrides])
        data = prepare(cfg.data)
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            codec, _ = train_mask_codec(
                cfg, data.train, data.val, data.info.num_classes, device, Path(tmp) / "codec"
            )
        # only masks go through this center: its image encoder is never trained or called
        center = Center(
            cfg, codec, build_image_encoder(cfg.codec), token_grid(cfg.data.size, cfg.codec), device
        )
        ceilings = {
            name: round(mask_ceiling(center, part.masks, data.info.num_classes), 4)
            for name, part in data.splits().items()
        }
        row = {
            "seed": seed,
            "wire_dtype": cfg.codec.wire_dtype,
            "ceiling": ceilings,
            "test_per_class": per_class_ceiling(center, data.test, data.info.class_names),
            "slices": data.split["slices"],
        }
        print(
            json.dumps(
                {**row, "ranges": data.split["slice_ranges"], "seconds": round(time.perf_counter() - start)}
            )
        )


if __name__ == "__main__":
    main()
