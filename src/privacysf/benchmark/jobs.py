"""The jobs a suite expands into, and what each one measures.

A job is the unit of resumption: it either finished and its rows are in ``results.json``, or it runs
again. Every row names its job, so ``privacysf bench run SUITE --only JOB`` reproduces it alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from privacysf.benchmark.fuzzing import fuzz_server_process
from privacysf.benchmark.latency import query_latency, query_stages
from privacysf.benchmark.service_load import large_upload_row, service_load_rows
from privacysf.benchmark.suites import BenchSuite
from privacysf.center.pipeline import Mapper
from privacysf.common.torchutil import class_labels
from privacysf.config import ExperimentConfig, UNetConfig
from privacysf.nets.unet import build_unet
from privacysf.reference.run import run_reference, untrained_reference
from privacysf.workflows.fit import run_fit
from privacysf.workflows.inprocess import QueryClient, payload_bytes, query_payload, untrained_pipeline

PRIVACYSF = "Privacy-SF"
PRIVACYSF_SERVED = f"{PRIVACYSF}, mapper in ONNX Runtime"
"""The service's query path (``ServiceConfig.mapper_runtime``); ``fit`` and ``segment`` map in torch."""
UNET = "raw U-Net"
REFERENCE = "reference (Improved Privacy-SF, re-implemented)"
CLASSES_FOR_SIZES = 2
"""Mask classes of the untrained networks used for payload and latency (message sizes ignore it)."""


@dataclass(frozen=True)
class Job:
    id: str
    kind: str
    """``accuracy``, ``payload``, ``service_fuzz``, ``latency``, ``scaling``, ``service_load`` or
    ``upload_memory``; the service jobs' ids start with ``service/``."""
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class JobContext:
    suite: BenchSuite
    runs_dir: Path
    device_name: str
    progress: bool


def plan(suite: BenchSuite) -> list[Job]:
    """Every job of a suite, cheapest kinds first so a partial run already has them."""
    jobs = [
        Job("payload", "payload", {"size": suite.payload_size}),
        Job("service/fuzz", "service_fuzz", {"requests": suite.fuzz_requests, "seed": 0}),
    ]
    params: dict[str, Any]
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        for size in suite.latency_sizes:
            for batch in suite.latency_batches:
                params = {"size": size, "batch": batch, "device": device}
                jobs.append(Job(f"latency/{device}/{size}/b{batch}", "latency", params))
    jobs.append(Job("service/load", "service_load"))
    jobs.append(Job("service/upload-memory", "upload_memory", {"megabytes": suite.service_large_upload_mb}))
    for dataset in suite.datasets:
        for seed in suite.seeds:
            for method in suite.methods:
                params = {
                    "dataset": dataset,
                    "seed": seed,
                    "method": method,
                    "epochs": suite.epochs_for(dataset),
                }
                jobs.append(Job(f"accuracy/{dataset}/seed{seed}/{method}", "accuracy", params))
    for size in suite.scaling_sizes:
        params = {"size": size, "fraction": 1.0, "epochs": suite.scaling_epochs}
        jobs.append(Job(f"scaling/size{size}", "scaling", params))
    for fraction in suite.scaling_fractions:
        if fraction != 1.0 or suite.size not in suite.scaling_sizes:
            params = {"size": suite.size, "fraction": fraction, "epochs": suite.scaling_epochs}
            jobs.append(Job(f"scaling/fraction{fraction}", "scaling", params))
    return jobs


def job_config(
    ctx: JobContext, dataset: str, seed: int, size: int, epochs: int, extra: list[str]
) -> ExperimentConfig:
    """The suite's config for one training job: same budget, split seed and threads for every method."""
    return ExperimentConfig().override(
        [
            f"data.dataset={dataset}",
            f"data.size={size}",
            f"data.seed={seed}",
            f"train.seed={seed}",
            f"train.epochs={epochs}",
            f"train.threads={ctx.suite.threads}",
            f"train.device={ctx.device_name}",
            f"train.progress={str(ctx.progress).lower()}",
            f"output_dir={ctx.runs_dir}",
            *ctx.suite.overrides,
            *extra,
        ]
    )


def _scores(test: dict) -> dict:
    mean = test["mean"]
    return {
        "dice": mean["dice"]["mean"],
        "iou": mean["iou"]["mean"],
        "hd95": mean["hd95"]["mean"],
        "assd": mean["assd"]["mean"],
        "distance_unit": test.get("distance_unit", "mm"),
        "test_slices": test["n_images"],
    }


def run_accuracy(job: Job, ctx: JobContext) -> list[dict]:
    p, suite = job.params, ctx.suite
    if p["method"] == "reference":
        cfg = job_config(ctx, p["dataset"], p["seed"], suite.size, p["epochs"], ["compare_unet=false"])
        run_dir, metrics = run_reference(cfg)
        r = metrics["reference"]
        return [
            {
                "method": REFERENCE,
                "run": run_dir,
                **_scores(r["test"]),
                "payload_bytes": r["payload_bytes_per_query"]["total"],
                "raw_image_bytes": r["raw_image_bytes"],
                "raw_image_dtype": r["raw_image_dtype"],
                "training_cost": r["training_cost"],
            }
        ]
    mode = p["method"].removeprefix("privacysf-")
    with_unet = mode == "task"
    cfg = job_config(
        ctx,
        p["dataset"],
        p["seed"],
        suite.size,
        p["epochs"],
        [f"codec.image_mode={mode}", f"compare_unet={str(with_unet).lower()}"],
    )
    run_dir, metrics = run_fit(cfg)
    pf = metrics["privacysf"]
    rows = [
        {
            "method": f"{PRIVACYSF} {mode}",
            "run": run_dir,
            **_scores(pf["test"]),
            "mask_codec_ceiling_dice": pf["mask_codec_ceiling_dice"],
            "payload_bytes": pf["payload_bytes_per_query"]["total"],
            "raw_image_bytes": pf["raw_image_bytes"],
            "raw_image_dtype": pf["raw_image_dtype"],
            "training_cost": pf["training_cost"],
            "pipeline_seconds": pf["training_seconds"]["center_total"]
            + pf["upload"]["encode_seconds"]
            + pf["training_seconds"]["server_mapper"],
        }
    ]
    if with_unet:
        u = metrics["raw_unet"]
        rows.append(
            {
                "method": UNET,
                "run": run_dir,
                **_scores(u["test"]),
                "training_cost": {"unet": u["training_cost"]},
            }
        )
    return rows


def run_payload(job: Job, ctx: JobContext) -> list[dict]:
    """The most one query sends at the payload size, each method's messages as they are before any
    deflating (what deflating saves depends on trained codes: each accuracy job records its own)."""
    size = job.params["size"]
    center, server = untrained_reference(CLASSES_FOR_SIZES, size, torch.device("cpu"))
    reference = payload_bytes(center, server, np.zeros((1, 1, size, size), np.float32))
    return [
        {"method": PRIVACYSF, "size": size, **query_payload(ExperimentConfig(), CLASSES_FOR_SIZES, size)},
        {"method": REFERENCE, "size": size, **reference},
    ]


def run_latency(job: Job, ctx: JobContext) -> list[dict]:
    """Privacy-SF at the defaults (mapping in torch, as ``fit`` and ``segment`` do, and on the CPU in
    ONNX Runtime, as the service does), the reference and the raw U-Net answering the same batch, timed
    in turn (issue 17: the query's cost as a ratio to the U-Net's inference, measured side by side)."""
    p, suite = job.params, ctx.suite
    torch.set_num_threads(suite.threads)
    device = torch.device(p["device"])
    built: dict[str, tuple[QueryClient, Mapper]] = {
        PRIVACYSF: untrained_pipeline(ExperimentConfig(), CLASSES_FOR_SIZES, p["size"], p["device"]),
        REFERENCE: untrained_reference(CLASSES_FOR_SIZES, p["size"], device),
    }
    if device.type == "cpu":  # ONNX Runtime serves on the CPU only
        served = ExperimentConfig().override(["mapper.runtime=onnxruntime"])
        built[PRIVACYSF_SERVED] = untrained_pipeline(served, CLASSES_FOR_SIZES, p["size"], p["device"])
    unet = build_unet(UNetConfig(), CLASSES_FOR_SIZES).to(device).eval()
    images = (
        np.random.default_rng(0).standard_normal((p["batch"], 1, p["size"], p["size"])).astype(np.float32)
    )

    def segment() -> torch.Tensor:  # from and to host memory, as the pipelines' encode and decode
        return class_labels(unet(torch.from_numpy(images).to(device))).cpu()

    with torch.inference_mode():
        pipelines = {name: query_stages(center, server, images) for name, (center, server) in built.items()}
        by_method = query_latency(
            pipelines, {UNET: segment}, p["batch"], device, suite.latency_repeats, suite.latency_warmup
        )
    return [
        {
            "method": method,
            "size": p["size"],
            "batch": p["batch"],
            "device": p["device"],
            "threads": torch.get_num_threads() if p["device"] == "cpu" else None,
            "repeats": suite.latency_repeats,
            **times,
        }
        for method, times in by_method.items()
    ]


def run_scaling(job: Job, ctx: JobContext) -> list[dict]:
    p, suite = job.params, ctx.suite
    cfg = job_config(
        ctx,
        suite.scaling_dataset,
        0,
        p["size"],
        p["epochs"],
        [f"data.train_fraction={p['fraction']}", "train.patience=1000"],
    )
    run_dir, metrics = run_fit(cfg)
    train_slices = metrics["split"]["slices"]["train"]
    costs = {**metrics["privacysf"]["training_cost"], "unet": metrics["raw_unet"]["training_cost"]}
    return [
        {
            "method": UNET if stage == "unet" else PRIVACYSF,
            "stage": stage,
            "size": p["size"],
            "train_fraction": p["fraction"],
            "train_slices": train_slices,
            "run": run_dir,
            **cost,
        }
        for stage, cost in costs.items()
    ]


def run_service_load(job: Job, ctx: JobContext) -> list[dict]:
    suite = ctx.suite
    return service_load_rows(
        ctx.runs_dir / "service-load",
        suite.service_clients,
        suite.latency_batches,
        suite.service_requests,
        suite.service_uploads,
        suite.service_upload_mb,
    )


def run_upload_memory(job: Job, ctx: JobContext) -> list[dict]:
    return [large_upload_row(ctx.runs_dir / "service-upload-memory", job.params["megabytes"])]


def run_service_fuzz(job: Job, ctx: JobContext) -> list[dict]:
    """Hostile requests to ``privacysf server serve``: one row per endpoint and status, then the total."""
    root = ctx.runs_dir / "service-fuzz"
    root.mkdir(parents=True, exist_ok=True)
    tally, seconds = fuzz_server_process(root, job.params["requests"], job.params["seed"])
    rows: list[dict] = [
        {"target": target, "status": status, "requests": count}
        for (target, status), count in sorted(tally.statuses.items())
    ]
    total = {
        "target": "all",
        "status": None,
        "requests": tally.sent,
        "seconds": seconds,
        "server_errors": tally.server_errors,
        "violations": tally.violations[:20],
    }
    return [*rows, total]


RUNNERS: dict[str, Callable[[Job, JobContext], list[dict]]] = {
    "accuracy": run_accuracy,
    "payload": run_payload,
    "service_fuzz": run_service_fuzz,
    "latency": run_latency,
    "scaling": run_scaling,
    "service_load": run_service_load,
    "upload_memory": run_upload_memory,
}
