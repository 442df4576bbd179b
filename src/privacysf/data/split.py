"""Splits by case (patient), or by contiguous slabs when a dataset holds fewer than three cases.

Slices of one patient are strongly correlated: splitting by slice would leak test anatomy into
training and inflate every score. Only datasets of one or two cases (the ICBM152 and Colin27
templates, one microscopy stack, a user's two-patient lesion set) are split inside a case, and then by
contiguous slabs with a guard gap, and the run metadata says so.

A slab split is stratified: a lesion seen on ten slices of one patient lands in one random slab of
ten unless the slabs are placed with it in mind, and a validation split without it makes early
stopping reward predicting nothing. So among slab draws (deterministic in the seed) the split keeps
the one whose train, test and validation slabs hold foreground of the most classes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from privacysf.errors import ConfigError

SPLITS = ("train", "val", "test")
MAX_SLAB_BLOCKS = 10
MIN_SLAB_BLOCKS = 5
SLICES_PER_BLOCK = 10
MIN_SLICES_PER_BLOCK = 3
"""Smallest slab tried when stratifying: a slab between two of other splits keeps n - 2 slices."""
DRAWS_PER_BLOCK_COUNT = 32
SLAB_GUARD = 1


def _counts(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    """Units per split; the fractions themselves are checked once, by ``DataConfig``."""
    n_test = max(1, round(n * test_fraction))
    n_val = max(1, round(n * val_fraction))
    n_train = n - n_test - n_val
    if n_train < 1:
        raise ConfigError(
            f"{n} units are too few for train/val/test fractions; lower data.val_fraction and "
            "data.test_fraction"
        )
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


def class_presence(masks: np.ndarray, num_classes: int) -> np.ndarray:
    """(slices, classes - 1) booleans: which foreground classes each (S, H, W) mask slice shows."""
    flat = masks.reshape(len(masks), -1)
    return np.stack([(flat == k).any(axis=1) for k in range(1, num_classes)], axis=1)


def _slab_labels(n_slices: int, n_blocks: int, block_split: np.ndarray) -> np.ndarray:
    """Split code of each slice (in slice order) for the blocks' codes, guard gaps set to -1."""
    labels = np.repeat(block_split, [len(b) for b in np.array_split(np.arange(n_slices), n_blocks)])
    guarded = labels.copy()
    for offset in range(1, SLAB_GUARD + 1):
        guarded[:-offset][labels[:-offset] != labels[offset:]] = -1
        guarded[offset:][labels[offset:] != labels[:-offset]] = -1
    return guarded


def _slab_candidates(
    n_slices: int, val_fraction: float, test_fraction: float, seed: int
) -> Iterator[np.ndarray]:
    """Slab draws, plain first: the default block count with ``seed`` itself, then finer slabs.

    Finer slabs come later so that a draw with more guard losses is kept only when it covers more.
    """
    default = int(np.clip(n_slices // SLICES_PER_BLOCK, MIN_SLAB_BLOCKS, MAX_SLAB_BLOCKS))
    for n_blocks in range(default, max(default, n_slices // MIN_SLICES_PER_BLOCK) + 1):
        n_train, n_val, _ = _counts(n_blocks, val_fraction, test_fraction)
        blocks = np.repeat([0, 1, 2], [n_train, n_val, n_blocks - n_train - n_val])
        for draw in range(DRAWS_PER_BLOCK_COUNT):
            first = n_blocks == default and draw == 0
            rng = np.random.default_rng(seed if first else [seed, n_blocks, draw])
            yield _slab_labels(n_slices, n_blocks, rng.permutation(blocks))


def split_slabs(
    presence: Sequence[np.ndarray], val_fraction: float, test_fraction: float, seed: int
) -> list[np.ndarray]:
    """Split code (0/1/2 for train/val/test, -1 for guard gaps) of every slice of every case.

    ``presence[i]`` is :func:`class_presence` of case ``i``'s slices in slice order. Each case is cut
    into contiguous blocks assigned to splits at random; slices within ``SLAB_GUARD`` of a block of
    another split are dropped, so no test slice has a direct neighbour in training. Cases are taken in
    turn, each keeping the first draw that leaves the most splits non-empty, then covers the most
    (split, class) pairs over all cases so far, then the most classes in train, then in test.
    """
    present = np.any([p.any(axis=0) for p in presence], axis=0)
    perfect = (len(SPLITS), len(SPLITS) * int(present.sum()))
    covered = np.zeros((len(SPLITS), len(present)), bool)
    filled = np.zeros(len(SPLITS), bool)
    result = []
    for case_presence in presence:
        candidates = _slab_candidates(len(case_presence), val_fraction, test_fraction, seed)
        best = _coverage(next(candidates), case_presence, covered, filled)
        for labels in candidates:
            if best[0][:2] == perfect:
                break
            draw = _coverage(labels, case_presence, covered, filled)
            if draw[0] > best[0]:
                best = draw
        _, labels, covered, filled = best
        result.append(labels)
    return result


def _coverage(
    labels: np.ndarray, presence: np.ndarray, covered: np.ndarray, filled: np.ndarray
) -> tuple[tuple[int, ...], np.ndarray, np.ndarray, np.ndarray]:
    """Score of one case's draw given earlier cases' (split, class) coverage and non-empty splits."""
    in_split = [labels == code for code in range(len(SPLITS))]
    cover = covered | np.array([presence[s].any(axis=0) for s in in_split])
    fill = filled | np.array([s.any() for s in in_split])
    score = (int(fill.sum()), int(cover.sum()), int(cover[0].sum()), int(cover[2].sum()))
    return score, labels, cover, fill
