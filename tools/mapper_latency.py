"""Latency of the server's mapper kinds side by side, with the raw U-Net's inference for scale.

Every network is freshly initialised (the arithmetic does not depend on the weights) for the default
codec; each repetition runs every call in turn (:func:`privacysf.benchmark.latency.interleaved_times`)
and the table gives medians and the median of the per-repetition ratios. Encode and decode are the
center's stages of a query; a Privacy-SF total is encode + that kind's map + decode.

    PYTHONPATH=src .venv/bin/python tools/mapper_latency.py --out docs/benchmarks/mapper_latency.md
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from privacysf.benchmark.jobs import CLASSES_FOR_SIZES
from privacysf.benchmark.latency import interleaved_times
from privacysf.common.markdown import Markdown
from privacysf.config import ExperimentConfig, UNetConfig
from privacysf.nets.unet import build_unet
from privacysf.server.mapping import MappingServer
from privacysf.workflows.inprocess import untrained_pipeline

KINDS = ("cnn", "unet")


def gflop(server: MappingServer, message: bytes) -> float:
    """Arithmetic of one mapping of ``message`` (multiply-adds count two), as torch counts it."""
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        server.map(message)
    return counter.get_total_flops() / 1e9


def measure(size: int, batch: int, repeats: int) -> dict:
    pipelines = {
        kind: untrained_pipeline(
            ExperimentConfig().override([f"mapper.kind={kind}"]), CLASSES_FOR_SIZES, size
        )
        for kind in KINDS
    }
    center = pipelines[KINDS[0]][0]
    unet = build_unet(UNetConfig(), CLASSES_FOR_SIZES).eval()
    images = np.random.default_rng(0).standard_normal((batch, 1, size, size)).astype(np.float32)
    pixels = torch.from_numpy(images)
    up = center.image_message(images)
    down = pipelines[KINDS[0]][1].map(up)
    calls = {
        "raw U-Net": lambda: unet(pixels),
        "encode": lambda: center.image_message(images),
        **{f"map {kind}": (lambda server=server: server.map(up)) for kind, (_, server) in pipelines.items()},
        "decode": lambda: center.decode_message(down),
    }
    with torch.inference_mode():
        times = interleaved_times(calls, torch.device("cpu"), repeats, warmup=1)
    row: dict = {"size": size, "batch": batch, "repeats": repeats}
    for kind, (_, server) in pipelines.items():
        row[f"map {kind} GFLOP/image"] = gflop(server, up) / batch
    row |= {f"{name} ms": statistics.median(t) for name, t in times.items()}
    for kind in KINDS:
        totals = [
            e + m + d for e, m, d in zip(times["encode"], times[f"map {kind}"], times["decode"], strict=True)
        ]
        row[f"total {kind} ms"] = statistics.median(totals)
        row[f"total {kind} / raw U-Net"] = statistics.median(
            t / u for t, u in zip(totals, times["raw U-Net"], strict=True)
        )
    row["map cnn / map unet"] = statistics.median(
        c / u for c, u in zip(times["map cnn"], times["map unet"], strict=True)
    )
    return row


def markdown(rows: list[dict], threads: int) -> Markdown:
    columns = list(rows[0])
    return (
        Markdown()
        .paragraph(
            f"Mapper latency, untrained networks, {threads} CPU thread(s): medians over `repeats` "
            "interleaved repetitions after one warm-up; ratios are medians of per-repetition ratios "
            "(`tools/mapper_latency.py`)."
        )
        .table(
            columns,
            [[r[c] for c in columns] for r in rows],
            [".2f" if "/" in c else ".1f" if c.endswith("ms") else "" for c in columns],
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--out", type=Path, required=True, help="markdown table; the rows go beside it as .json"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for size in args.sizes:
        for batch in args.batches:
            rows.append(measure(size, batch, args.repeats))
            print(json.dumps(rows[-1]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    markdown(rows, args.threads).write(args.out)
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
