"""Latency of one query, stage by stage: encode (center), map (server), decode (center).

Each stage is timed on its own, wire messages included (the server's time covers decoding the image
message and encoding the reply), after warm-up runs, and the median of the repetitions is kept:
medians resist the outliers a shared machine produces. CUDA work is synchronised before each clock
read, so the times are of finished work.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import torch

from privacysf.center.pipeline import Mapper
from privacysf.workflows.inprocess import QueryClient

STAGES = ("encode", "map", "decode")

T = TypeVar("T")


def _timed(fn: Callable[[], T], device: torch.device) -> tuple[float, T]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) * 1000, out


def query_latency(
    center: QueryClient,
    server: Mapper,
    images: np.ndarray,
    device: torch.device,
    repeats: int,
    warmup: int,
) -> dict[str, float]:
    """Median milliseconds of each stage for one batch ``images`` (N, 1, H, W), and their sum."""
    times: dict[str, list[float]] = {stage: [] for stage in STAGES}
    for run in range(warmup + repeats):
        encode_ms, up = _timed(lambda: center.image_message(images), device)
        map_ms, down = _timed(functools.partial(server.map, up), device)
        decode_ms, _ = _timed(functools.partial(center.decode_message, down), device)
        if run >= warmup:
            for stage, ms in zip(STAGES, (encode_ms, map_ms, decode_ms), strict=True):
                times[stage].append(ms)
    result = {f"{stage}_ms": statistics.median(values) for stage, values in times.items()}
    result["total_ms"] = sum(result[f"{stage}_ms"] for stage in STAGES)
    result["per_image_ms"] = result["total_ms"] / len(images)
    return result


def interleaved_times(
    calls: dict[str, Callable[[], object]], device: torch.device, repeats: int, warmup: int
) -> dict[str, list[float]]:
    """Milliseconds of each call at every timed repetition, the calls run in turn within each one.

    Taking turns puts every candidate under the same load: on a shared machine a slow spell slows
    all the calls of a repetition, not only the one that happened to run during it, so medians and
    per-repetition ratios compare like with like.
    """
    times: dict[str, list[float]] = {name: [] for name in calls}
    for run in range(warmup + repeats):
        for name, fn in calls.items():
            ms, _ = _timed(fn, device)
            if run >= warmup:
                times[name].append(ms)
    return times
