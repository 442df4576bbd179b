"""Splits by case (patient), or by contiguous slabs when a dataset holds a single case.

Slices of one patient are strongly correlated: splitting by slice would leak test anatomy into
training and inflate every score. Only single-subject datasets (the ICBM152 and Colin27 templates, one
microscopy stack) are split inside a case, and then by contiguous slabs with a guard gap, and the run
metadata says so.
"""

from __future__ import annotations

import numpy as np

from privacysf.errors import ConfigError

SPLITS = ("train", "val", "test")
MAX_SLAB_BLOCKS = 10
MIN_SLAB_BLOCKS = 5
SLICES_PER_BLOCK = 10
SLAB_GUARD = 1


def _counts(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    """Units per split; the fractions themselves are checked once, by ``DataConfig``."""
    n_test = max(1, round(n * test_fraction))
    n_val = max(1, round(n * val_fraction))
    n_train = n - n_test - n_val
    if n_train < 1:
        raise ConfigError(f"{n} units are too few for train/val/test fractions; lower the fractions")
    return n_train, n_val, n_test


def split_cases(
    case_ids: list[str], val_fraction: float, test_fraction: float, seed: int
) -> dict[str, list[str]]:
    """Assign whole cases to train/val/test, reproducibly from ``seed``."""
    unique = sorted(set(case_ids))
    n_train, n_val, _ = _counts(len(unique), val_fraction, test_fraction)
    order = np.random.default_rng(seed).permutation(len(unique))
    shuffled = [unique[i] for i in order]
    return {
        "train": sorted(shuffled[:n_train]),
        "val": sorted(shuffled[n_train : n_train + n_val]),
        "test": sorted(shuffled[n_train + n_val :]),
    }


def split_slabs(slice_index: np.ndarray, val_fraction: float, test_fraction: float, seed: int) -> np.ndarray:
    """Label each slice of a single case with its split (0/1/2), or -1 for the guard gaps.

    The slice axis is cut into 5 to 10 contiguous blocks (about ten slices each) assigned to splits at
    random; slices within ``SLAB_GUARD`` of a block of another split are dropped, so no test slice has
    a direct neighbour in training.
    """
    order = np.argsort(slice_index)
    n_blocks = int(np.clip(len(order) // SLICES_PER_BLOCK, MIN_SLAB_BLOCKS, MAX_SLAB_BLOCKS))
    blocks = np.array_split(order, n_blocks)
    n_train, n_val, _ = _counts(n_blocks, val_fraction, test_fraction)
    block_split = np.repeat([0, 1, 2], [n_train, n_val, n_blocks - n_train - n_val])
    block_split = np.random.default_rng(seed).permutation(block_split)
    labels = np.empty(len(slice_index), np.int64)
    for block, split in zip(blocks, block_split, strict=True):
        labels[block] = split
    ordered = labels[order]
    guarded = ordered.copy()
    for offset in range(1, SLAB_GUARD + 1):
        guarded[:-offset][ordered[:-offset] != ordered[offset:]] = -1
        guarded[offset:][ordered[offset:] != ordered[:-offset]] = -1
    result = np.empty_like(labels)
    result[order] = guarded
    return result
