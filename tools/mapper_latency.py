"""Latency of a query's stages for several pipeline settings side by side, with the raw U-Net's
inference (image to labels, as Privacy-SF's decode gives labels) for scale.

Every network is freshly initialised (the arithmetic does not depend on the weights). Each setting is
a list of ``--set`` overrides of the defaults; each repetition runs every call of every setting in
turn (:func:`privacysf.benchmark.latency.query_latency`), so a slow spell of a shared machine
slows them all alike. The table gives per setting the median of encode, map and decode, the median
of their per-repetition sum and the median of that sum's per-repetition ratio to the raw U-Net.

    PYTHONPATH=src .venv/bin/python tools/mapper_latency.py --out docs/benchmarks/mapper_latency.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from privacysf.benchmark.jobs import CLASSES_FOR_SIZES
from privacysf.benchmark.latency import STAGES, query_latency, query_stages
from privacysf.common.markdown import Markdown
from privacysf.common.torchutil import class_labels
from privacysf.config import ExperimentConfig, UNetConfig
from privacysf.nets.onnx_runtime import OnnxRuntimeModule
from privacysf.nets.unet import build_unet
from privacysf.workflows.inprocess import untrained_pipeline


class Setting(NamedTuple):
    overrides: list[str]
    """``--set`` overrides of the defaults."""
    mapper_channels_last: bool = True
    """Keep the mapper's weights in the channels-last layout serving puts them in (every network is
    in its served form, as ``privacysf segment`` and the service run them)."""


KEYED = ["key.enabled=true", "key.permute_tokens=true", "mapper.kind=transformer", "augment.shift=0"]
"""A center that mixes channels and permutes tokens with its key, and the order-blind mapper it needs."""

SETTINGS: dict[str, Setting] = {
    "defaults before mask_decoder_width=8": Setting(["codec.mask_decoder_width=16"]),
    "defaults": Setting([]),
    "defaults, mapper in the default layout": Setting([], mapper_channels_last=False),
    "narrow grid mapper": Setting(["mapper.grid_channels=[16,32,64,128]"]),
    "poly mapper": Setting(["mapper.kind=poly"]),
    "coarse grid": Setting(["codec.downsample=8", "codec.image_channels=3", "codec.mask_channels=3"]),
    "circular padding": Setting(["codec.padding=circular"]),
    "GELU mapper (before 2026-12-05)": Setting(["mapper.activation=gelu"]),
    "mid grid mapper": Setting(["mapper.grid_channels=[16,32,128]"]),
    "mapper in ONNX Runtime": Setting(["mapper.runtime=onnxruntime"]),
    "leaky ReLU center": Setting(["codec.activation=leakyrelu"]),
    "leaky ReLU center, mapper in ONNX Runtime": Setting(
        ["codec.activation=leakyrelu", "mapper.runtime=onnxruntime"]
    ),
    "keyed, full-attention transformer": Setting([*KEYED, "mapper.latents=0"]),
    "keyed, transformer through 64 slots": Setting([*KEYED, "mapper.latents=64", "mapper.token_width=0"]),
    "keyed, transformer through 64 slots, width 64": Setting(
        [*KEYED, "mapper.latents=64", "mapper.width=64", "mapper.token_width=0"]
    ),
    "keyed, 64 slots, tokens 64 wide": Setting([*KEYED, "mapper.latents=64", "mapper.token_width=64"]),
    "keyed, 64 slots, tokens 32 wide": Setting([*KEYED, "mapper.latents=64", "mapper.token_width=32"]),
}
"""The settings compared: today's defaults (batch norm in the center networks, folded into the
convolutions for serving; the mapper's weights channels-last; one residual block per level of the unet
mapper; a mask decoder 8 wide at full resolution), the same with the decoder 16 wide there as in
earlier versions (the two blocks per level before ``mapper.res_units=1`` are compared in
docs/results.md, "Lighter training"), the defaults with the mapper's weights left in torch's default
layout, the unet mapper at
half the width on its three top levels (a quarter of their arithmetic; it lost 0.011 of 3-D Dice,
docs/results.md "A narrower grid mapper"), the poly mapper (the one encrypted queries need; here on
plain codes), and a coarser token grid (one token per 8×8
pixels, 3 values per token: under 1/8 of a uint8 image per 256² query), and encoders whose
convolutions wrap around the image (``codec.padding=circular``, exact whole-token shifts), the
unet mapper with the exact GELU of earlier versions for today's ReLU, the unet mapper 16 and 32 wide
on its two top levels (docs/results.md, "Lighter mappers and the mapper in ONNX Runtime", for the
Dice of both narrower mappers), and the default mapper served by ONNX Runtime (``mapper.runtime=onnxruntime``;
the raw U-Net is then also timed in ONNX Runtime, as a row of its own, for a like-for-like view;
both run without ONNX Runtime's memory arena since 2026-12-06, as served models do),
and center networks with a fixed-slope leaky ReLU for PReLU (``codec.activation=leakyrelu``), in
torch and beside the mapper in ONNX Runtime, and keyed codes (secret channel mixing and token
permutation) mapped by the order-blind transformer with attention between every pair of tokens or
through 64 learned slots (``mapper.latents``; docs/results.md, "Pooled attention for keyed codes"),
also at half the width, and with the tokens 64 or 32 wide beside slots 128 wide (``mapper.token_width``;
docs/results.md, "A narrower token stream").
The instance-norm and
unfolded forms were compared in an earlier run of this tool (docs/results.md, "Served center
networks")."""


UNET_ORT = "raw U-Net, ONNX Runtime"


def gflop(fn) -> float:
    """Arithmetic of one call (multiply-adds count two), as torch counts it, with the attention that
    torch's counter leaves out on the CPU: its kernel for CPUs has no formula registered, and the
    fused transformer layers of inference (the "fast path", off while counting) hide every operation."""
    cpu_attention = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _attention_flop}
    fast_path = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with FlopCounterMode(display=False, custom_mapping=cpu_attention) as counter, torch.inference_mode():
            fn()
    finally:
        torch.backends.mha.set_fastpath_enabled(fast_path)
    return counter.get_total_flops() / 1e9


def _attention_flop(
    query_shape: torch.Size, key_shape: torch.Size, value_shape: torch.Size, *_: object, **__: object
) -> int:
    """Scores and weighted sum of one attention call, from its shapes (torch's own formula); the
    counter also passes the call's other arguments and its output's shape, which do not change it."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def measure(size: int, batch: int, repeats: int, settings: dict[str, Setting]) -> list[dict]:
    """One row per setting (and one for the raw U-Net) at ``size``², ``batch`` images a query."""
    images = np.random.default_rng(0).standard_normal((batch, 1, size, size)).astype(np.float32)
    unet = build_unet(UNetConfig(), CLASSES_FOR_SIZES).eval()
    pixels = torch.from_numpy(images)
    baselines = {"raw U-Net": lambda: class_labels(unet(pixels))}  # labels out, as Privacy-SF's decode
    work = {"raw U-Net": gflop(lambda: unet(pixels)) / batch}
    if any("mapper.runtime=onnxruntime" in s.overrides for s in settings.values()):
        unet_ort = OnnxRuntimeModule(unet, pixels)
        baselines[UNET_ORT] = lambda: class_labels(unet_ort(pixels))
        work[UNET_ORT] = work["raw U-Net"]
    pipelines = {}
    for name, setting in settings.items():
        cfg = ExperimentConfig().override(setting.overrides)
        center, server = untrained_pipeline(cfg, CLASSES_FOR_SIZES, size)
        if not setting.mapper_channels_last and server.model is not None:  # undo prepare_for_serving
            server.model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
        stages = pipelines[name] = query_stages(center, server, images)
        exported, server.served = server.served, None  # the counter sees torch's operations only:
        work[name] = sum(gflop(fn) for fn in stages.values()) / batch  # count the exported model's
        server.served = exported
    with torch.inference_mode():
        timing = query_latency(pipelines, baselines, batch, torch.device("cpu"), repeats, warmup=1)
    return [
        {"size": size, "batch": batch, "setting": name, "GFLOP/image": work[name]}
        | {f"{stage} ms": times[f"{stage}_ms"] for stage in STAGES if f"{stage}_ms" in times}
        | {"total ms": times["total_ms"], "× raw U-Net": times["ratio"]}
        for name, times in timing.items()
    ]


def markdown(rows: list[dict], threads: int, repeats: int, settings: dict[str, Setting]) -> Markdown:
    columns = [
        "size",
        "batch",
        "setting",
        "GFLOP/image",
        "encode ms",
        "map ms",
        "decode ms",
        "total ms",
        "× raw U-Net",
    ]
    return (
        Markdown()
        .paragraph(
            f"Query latency, untrained networks, {threads} CPU thread(s), {repeats} interleaved "
            "repetitions after one warm-up: medians; total is the median of the per-repetition sums "
            "and × raw U-Net the median of their per-repetition ratios (`tools/mapper_latency.py`). "
            "Settings: "
            + "; ".join(
                f"{name}: `{' '.join(setting.overrides) or 'no override'}`"
                + ("" if setting.mapper_channels_last else ", mapper weights in the default layout")
                for name, setting in settings.items()
            )
            + "."
        )
        .table(
            columns,
            [[r.get(c, "") for c in columns] for r in rows],
            ["", "", "", ".2f", ".1f", ".1f", ".1f", ".1f", ".2f"],
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--settings", nargs="+", choices=SETTINGS, default=list(SETTINGS), help="a subset to compare"
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="markdown table; the rows go beside it as .json"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = {name: SETTINGS[name] for name in args.settings}
    rows = []
    for size in args.sizes:
        for batch in args.batches:
            measured = measure(size, batch, args.repeats, settings)
            print(json.dumps(measured), flush=True)
            rows += measured
    args.out.parent.mkdir(parents=True, exist_ok=True)
    markdown(rows, args.threads, args.repeats, settings).write(args.out)
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
