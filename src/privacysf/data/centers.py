"""Centers for multi-center runs: real sources as centers, or one dataset dealt out by case.

A multi-center task (``brain-3c``) makes each of its built-in datasets one center: different subjects,
scanners and sources, so the centers genuinely differ. Any other dataset is split into
``federation.centers`` centers by case, either at random (``iid``) or skewed, so that centers see
different structure sizes or class mixes. Each center then gets its own train/val/test split exactly
as a single-dataset run would (by case, or by slab for a single-case center), and every mode of a
multi-center run is scored on these same per-center test sets.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from privacysf.config import DataConfig, FederationConfig
from privacysf.data.cases import Case
from privacysf.data.prepare import PreparedData, load_cases, prepare, prepare_cases
from privacysf.errors import ConfigError, DataError

MULTI_CENTER_TASKS: dict[str, tuple[str, ...]] = {
    "brain-3c": ("icbm152-brain", "colin27-brain", "itk-t1-brain"),
}
"""Tasks whose centers are distinct built-in datasets with the same classes (one center each)."""


@dataclass
class CenterData:
    """One center's name and its own prepared train/val/test split."""

    name: str
    data: PreparedData


def partition_cases(cases: list[Case], centers: int, kind: str, seed: int) -> list[list[Case]]:
    """Deal whole cases to ``centers`` groups: ``iid`` at random, or skewed by a per-case statistic.

    Skewed partitions sort cases by foreground fraction (``size-skew``) or by the share of the last
    class within the foreground (``label-skew``) and hand out contiguous blocks, so center 0 holds the
    smallest structures (or rarest class) and the last center the largest.
    """
    if len(cases) < centers:
        raise ConfigError(
            f"{len(cases)} case(s) cannot be dealt to {centers} centers; lower federation.centers or use "
            "a dataset with more cases"
        )
    if kind == "iid":
        order = np.random.default_rng(seed).permutation(len(cases))
    else:
        last = max(int(c.mask.max()) for c in cases)

        def statistic(case: Case) -> float:
            foreground = case.mask > 0
            if kind == "size-skew":
                return float(foreground.mean())
            return float((case.mask == last).sum() / max(int(foreground.sum()), 1))

        order = np.argsort([statistic(c) for c in cases], kind="stable")
    return [[cases[i] for i in block] for block in np.array_split(order, centers)]


def prepare_centers(data: DataConfig, federation: FederationConfig) -> list[CenterData]:
    """Every center's prepared data, in a fixed order (center index = position in the list)."""
    if data.dataset in MULTI_CENTER_TASKS:
        names = MULTI_CENTER_TASKS[data.dataset]
        centers = [CenterData(name, prepare(data.updated(dataset=name))) for name in names]
    else:
        cases, info = load_cases(data)
        groups = partition_cases(cases, federation.centers, federation.partition, data.seed)
        centers = [
            CenterData(f"{info.name}-c{i}", prepare_cases(group, replace(info), data))
            for i, group in enumerate(groups)
        ]
    classes = {tuple(c.data.info.class_names) for c in centers}
    if len(classes) > 1:
        raise DataError(f"the centers of {data.dataset!r} disagree on their classes: {sorted(classes)}")
    return centers


def center_count(data: DataConfig, federation: FederationConfig) -> int:
    """How many centers a run has, without loading any data (for the server side and the CLI)."""
    return len(MULTI_CENTER_TASKS.get(data.dataset, ())) or federation.centers
