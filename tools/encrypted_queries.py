"""Latency and bytes of one encrypted query, stage by stage, beside the same query on plain codes and
the raw U-Net.

Networks are freshly initialised (neither the arithmetic nor the ciphertext sizes depend on weights;
the Dice of encrypted against plain queries comes from trained runs, ``privacysf fit --set
encryption.enabled=true``). One image a query, as the center sends them. Each repetition runs every
call in turn (:func:`privacysf.benchmark.latency.interleaved_times`); the table gives medians.

    PYTHONPATH=src .venv/bin/python tools/encrypted_queries.py --out docs/benchmarks/encrypted_queries.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from privacysf.benchmark.jobs import CLASSES_FOR_SIZES
from privacysf.benchmark.latency import interleaved_times
from privacysf.center.codecs import decode_masks, encode_images
from privacysf.center.encryption import QueryEncryption
from privacysf.common.markdown import Markdown
from privacysf.config import ExperimentConfig, UNetConfig
from privacysf.nets.unet import build_unet
from privacysf.workflows.inprocess import untrained_pipeline

OVERRIDES = ["mapper.kind=poly", "encryption.enabled=true"]
STAGES = ("encode", "encrypt", "map", "decrypt", "decode")


def measure(size: int, repeats: int) -> dict:
    cfg = ExperimentConfig().override(OVERRIDES)
    center, server = untrained_pipeline(cfg, CLASSES_FOR_SIZES, size)
    started = time.perf_counter()
    encryption = QueryEncryption.create(center.grid, cfg.mapper.kernel)
    keys = encryption.evaluation_keys().encode()
    server.register_keys(keys)
    key_seconds = time.perf_counter() - started
    image = np.random.default_rng(0).standard_normal((1, 1, size, size)).astype(np.float32)
    tokens = encode_images(center.image_encoder, image, center.device)
    up = encryption.encrypt(tokens, "image")
    down = server.map(up)
    reply = encryption.decrypt(down)
    plain_up = center.image_message(image)
    plain_down = server.map(plain_up)
    unet = build_unet(UNetConfig(), CLASSES_FOR_SIZES).eval()
    pixels = torch.from_numpy(image)
    calls = {
        "encode": lambda: encode_images(center.image_encoder, image, center.device),
        "encrypt": lambda: encryption.encrypt(tokens, "image"),
        "map": lambda: server.map(up),
        "decrypt": lambda: encryption.decrypt(down),
        "decode": lambda: decode_masks(center.mask_codec, reply, center.grid, center.device),
        "plain query": lambda: center.decode_message(server.map(center.image_message(image))),
        "raw U-Net": lambda: unet(pixels),
    }
    with torch.inference_mode():
        times = interleaved_times(calls, torch.device("cpu"), repeats, warmup=1)
    totals = [sum(parts) for parts in zip(*(times[s] for s in STAGES), strict=True)]
    return {
        "size": size,
        **{f"{stage} ms": statistics.median(times[stage]) for stage in STAGES},
        "encrypted total ms": statistics.median(totals),
        "plain query ms": statistics.median(times["plain query"]),
        "raw U-Net ms": statistics.median(times["raw U-Net"]),
        "up bytes": len(up),
        "down bytes": len(down),
        "plain bytes": len(plain_up) + len(plain_down),
        "raw image bytes": size * size,
        "evaluation key MB": len(keys) / 1e6,
        "key seconds": key_seconds,
        "ring degree": encryption.params.degree,
        "ciphertexts per code": -(-cfg.codec.image_channels // encryption.per_ciphertext),
    }


def markdown(rows: list[dict], threads: int, repeats: int) -> Markdown:
    timing = ["size", *(f"{s} ms" for s in STAGES), "encrypted total ms", "plain query ms", "raw U-Net ms"]
    sizes = [
        "size",
        "ring degree",
        "ciphertexts per code",
        "up bytes",
        "down bytes",
        "plain bytes",
        "raw image bytes",
        "evaluation key MB",
        "key seconds",
    ]
    return (
        Markdown()
        .paragraph(
            f"One encrypted query of one image, untrained networks at the defaults with "
            f"`{' '.join(OVERRIDES)}`, {threads} CPU thread(s), {repeats} interleaved repetitions after "
            "one warm-up, medians (`tools/encrypted_queries.py`). Encode and decode run on the "
            "center's networks; map is the server's whole work on the ciphertext (rotations, "
            "plaintext products, one square); plain query is the same pipeline on unencrypted codes."
        )
        .table(timing, [[r[c] for c in timing] for r in rows], ["", *(".1f" for _ in timing[1:])])
        .paragraph(
            "Bytes of the same query: ciphertexts up and down (SEAL's compressed serialisation with "
            "the message header), the plain codes both ways in the run's wire dtype, the uint8 "
            "image; the public evaluation keys the server takes once per center, and the seconds "
            "to make them."
        )
        .table(sizes, [[r[c] for c in sizes] for r in rows], ["", "", "", "", "", "", "", ".1f", ".1f"])
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True, help="markdown table; rows go beside it as .json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for size in args.sizes:
        rows.append(measure(size, args.repeats))
        print(json.dumps(rows[-1]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    markdown(rows, args.threads, args.repeats).write(args.out)
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
