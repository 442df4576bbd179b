"""Latency of one query, stage by stage: encode (center), map (server), decode (center), beside a
baseline such as the raw U-Net's inference on the same images.

Each stage is timed on its own, wire messages included (the server's time covers decoding the image
message and encoding the reply), after warm-up runs, and the median of the repetitions is kept:
medians resist the outliers a shared machine produces. Every call is timed in turn within each
repetition, so a slow spell slows the pipeline and its baseline alike, and the ratio of the two is
taken per repetition. CUDA work is synchronised before each clock read, so the times are of finished
work.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from privacysf.center.pipeline import Mapper
from privacysf.workflows.inprocess import QueryClient

STAGES = ("encode", "map", "decode")


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    """Milliseconds of one call, its CUDA work finished."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) * 1000


Calls = dict[str, Callable[[], object]]


def query_stages(center: QueryClient, server: Mapper, images: np.ndarray) -> Calls:
    """The encode, map and decode calls of one query of the batch ``images`` (N, 1, H, W), each on the
    message the stage before it made once here, so each can be timed (or counted) on its own."""
    up = center.image_message(images)
    down = server.map(up)
    return {
        "encode": functools.partial(center.image_message, images),
        "map": functools.partial(server.map, up),
        "decode": functools.partial(center.decode_message, down),
    }


def query_latency(
    pipelines: dict[str, Calls],
    baselines: Calls,
    batch: int,
    device: torch.device,
    repeats: int,
    warmup: int,
) -> dict[str, dict[str, float]]:
    """Per name, median milliseconds of one query of ``batch`` images: each stage of every pipeline
    (:func:`query_stages`), and every baseline call (e.g. the raw U-Net's inference on the same images,
    labels out), all timed in turn within each repetition.

    ``total_ms`` is the median of a pipeline's per-repetition sums of its stages, and ``ratio`` the
    median of the per-repetition ratios of a total to the first baseline's time in the same
    repetition: a ratio of two times taken moments apart, which a machine's slow spells move far less
    than either time.
    """
    if not baselines or set(baselines) & set(pipelines):
        raise ValueError("query_latency needs a baseline, and names that tell pipelines and baselines apart")
    calls = dict(baselines)
    for name, stage_calls in pipelines.items():
        calls |= {f"{name}: {stage}": fn for stage, fn in stage_calls.items()}
    times = interleaved_times(calls, device, repeats, warmup)
    base = times[next(iter(baselines))]
    totals = {name: times[name] for name in baselines}
    stages: dict[str, dict[str, float]] = {name: {} for name in baselines}
    for name in pipelines:
        parts = {stage: times[f"{name}: {stage}"] for stage in STAGES}
        stages[name] = {f"{stage}_ms": statistics.median(ms) for stage, ms in parts.items()}
        totals[name] = [sum(ms) for ms in zip(*parts.values(), strict=True)]
    return {
        name: stages[name]
        | {
            "total_ms": statistics.median(total),
            "per_image_ms": statistics.median(total) / batch,
            "ratio": statistics.median(t / b for t, b in zip(total, base, strict=True)),
        }
        for name, total in totals.items()
    }


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
            ms = _timed(fn, device)
            if run >= warmup:
                times[name].append(ms)
    return times
