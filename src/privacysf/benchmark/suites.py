"""The named benchmark suites: what is measured, on which data, with which budget."""

from __future__ import annotations

from dataclasses import dataclass, field

from privacysf.errors import ConfigError

METHODS = ("privacysf-task", "privacysf-autoencoder", "privacysf-private", "reference")
"""Accuracy jobs run per dataset and seed: each Privacy-SF mode at its default settings (``private`` at
the default λ), then the reference. ``privacysf-task`` also trains the raw U-Net on the same split and
budget, so every method of one seed shares its split."""


@dataclass(frozen=True)
class BenchSuite:
    name: str
    description: str
    datasets: tuple[str, ...]
    seeds: tuple[int, ...]
    size: int
    """Working image size of the accuracy jobs."""
    epochs: int
    latency_sizes: tuple[int, ...]
    latency_batches: tuple[int, ...]
    latency_repeats: int
    """Timed repetitions per stage; the median is published."""
    latency_warmup: int
    scaling_dataset: str
    scaling_sizes: tuple[int, ...]
    scaling_fractions: tuple[float, ...]
    """Shares of the training slices (``data.train_fraction``) for the cost-vs-dataset-size runs."""
    scaling_epochs: int
    methods: tuple[str, ...] = METHODS
    payload_size: int = 256
    """Image size at which the payload target is checked (message sizes need no training)."""
    threads: int = 2
    """CPU threads for every job: the published CPU figures state it."""
    overrides: tuple[str, ...] = ()
    """``--set`` overrides applied to every job's config."""
    service_clients: tuple[int, ...] = (1, 8)
    """Concurrent clients of each service load scenario (``privacysf server serve`` over loopback)."""
    service_requests: int = 400
    """Requests of each map and ``GET /jobs`` scenario, at each client count."""
    service_uploads: int = 40
    """Uploads of the mid-size dataset at each client count."""
    service_upload_mb: float = 4.0
    service_large_upload_mb: float = 512.0
    """One upload of this size on a fresh server: the server's peak memory above idle during it (issue
    18's target is judged at 512 MiB)."""
    fuzz_requests: int = 300
    """Structure-aware fuzzing requests sent to a live server (``service/fuzz``; CI's test sends 5,001)."""
    epochs_by_dataset: dict[str, int] = field(default_factory=dict)
    """Datasets whose accuracy jobs get more epochs than ``epochs`` (every method alike), so that a
    dataset with few training slices still gets a comparable number of optimiser steps."""

    def epochs_for(self, dataset: str) -> int:
        return self.epochs_by_dataset.get(dataset, self.epochs)


SUITES = {
    "quick": BenchSuite(
        name="quick",
        description="smoke test for CI: every job kind on a tiny phantom, checks the files, not the figures",
        datasets=("phantom",),
        seeds=(0,),
        size=64,
        epochs=2,
        latency_sizes=(64,),
        latency_batches=(1, 4),
        latency_repeats=3,
        latency_warmup=1,
        scaling_dataset="phantom",
        scaling_sizes=(32, 64),
        scaling_fractions=(0.5, 1.0),
        scaling_epochs=1,
        overrides=("data.phantom_cases=12",),
        service_clients=(1, 4),
        service_requests=24,
        service_uploads=8,
        service_upload_mb=0.25,
        service_large_upload_mb=4.0,
    ),
    "full": BenchSuite(
        name="full",
        description="the published figures: five datasets, three seeds, 128², 30 epochs",
        datasets=("icbm152-tissue", "colin27-brain", "dsb-nuclei", "cells3d-nuclei", "phantom"),
        seeds=(0, 1, 2),
        size=128,
        epochs=30,
        latency_sizes=(128, 256),
        latency_batches=(1, 32),
        latency_repeats=20,
        latency_warmup=3,
        scaling_dataset="icbm152-tissue",
        scaling_sizes=(128, 256),
        scaling_fractions=(0.25, 0.5, 1.0),
        scaling_epochs=2,
        # cells3d-nuclei's 23 training slices were 3 batches an epoch, and the published runs gave it
        # 150 epochs (seed 0: task Dice 0.397 at 30 epochs, 0.908 at 150); train.min_steps now makes
        # every epoch at least 12 steps, so 30 epochs give it ~360 steps, as many as the brains get.
        fuzz_requests=50_000,
    ),
}


def get_suite(name: str) -> BenchSuite:
    if name not in SUITES:
        raise ConfigError(f"unknown benchmark suite {name!r}; choose one of {sorted(SUITES)}")
    return SUITES[name]
