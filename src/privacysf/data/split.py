"""Splits by case (patient), or by contiguous slabs when a dataset holds fewer than three cases.

Slices of one patient are strongly correlated: splitting by slice would leak test anatomy into
training and inflate every score. Only datasets of one or two cases (the ICBM152 and Colin27
templates, one microscopy stack, a user's two-patient lesion set) are split inside a case, and then by
contiguous slabs with a guard gap, and the run metadata says so.

A slab split is stratified: a lesion seen on ten slices of one patient lands in one random slab of
ten unless the slabs are placed with it in mind, and a validation split without it makes early
stopping reward predicting nothing. So among slab draws (deterministic in the seed) the split keeps
the one whose train, test and validation slabs hold foreground of the most classes, and then the one
that shares the slices with foreground out nearest the fractions.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from privacysf.errors import ConfigError

SPLITS = ("train", "val", "test")
MAX_SLAB_BLOCKS = 10
MIN_SLAB_BLOCKS = 5
SLICES_PER_BLOCK = 10
MIN_SLICES_PER_BLOCK = 3
"""Smallest slab tried when stratifying: a slab between two of other splits keeps n - 2 slices."""
DRAWS_PER_BLOCK_COUNT = 32
ROUNDS = 2
"""Passes over the cases of a slab split: in turn, then each again knowing all the others' slabs."""
SHARE_STEP = 0.25
"""Foreground shares are compared in steps of this part of the foreground slices: finer, and the
best share would be one draw whatever the seed, leaving multi-seed runs a single split."""
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
    """Split code of each slice (in slice order) for the blocks' codes, guard gaps set to -1.

    Blocks are sized as ``np.array_split`` sizes them: the longer ones first.
    """
    short, longer = divmod(n_slices, n_blocks)
    labels = np.repeat(block_split, [short + 1] * longer + [short] * (n_blocks - longer))
    guarded = labels.copy()
    for offset in range(1, SLAB_GUARD + 1):
        guarded[:-offset][labels[:-offset] != labels[offset:]] = -1
        guarded[offset:][labels[offset:] != labels[:-offset]] = -1
    return guarded


def _slab_candidates(
    n_slices: int, val_fraction: float, test_fraction: float, seed: int
) -> Iterator[np.ndarray]:
    """Slab draws, plain first: the default block count with ``seed`` itself, then finer slabs.

    Finer slabs come later, so a draw with more guard losses is kept only when it scores higher.
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
    another split are dropped, so no test slice has a direct neighbour in training. Each case keeps
    the first draw that, with the other cases' draws, leaves the most splits non-empty, then covers
    the most (split, class) pairs, then the most classes in train, then in test, then shares the
    slices with foreground out closest to the fractions (each one lost to a guard gap counting as
    one off; in steps of ``SHARE_STEP``). Cases are chosen in turn, then once more knowing every
    other case's choice, so a second patient can carry a class to the splits the first one cannot
    reach without deep cuts.
    """
    targets = np.array([1 - val_fraction - test_fraction, val_fraction, test_fraction])
    draws = [list(_slab_candidates(len(p), val_fraction, test_fraction, seed)) for p in presence]
    tallies = [
        [_Tally.of(labels, p) for labels in case_draws] for p, case_draws in zip(presence, draws, strict=True)
    ]
    none = _Tally.empty(presence[0].shape[1])
    chosen = [none] * len(presence)
    result = [np.zeros(0, np.int64)] * len(presence)
    for _ in range(ROUNDS):
        for i in range(len(presence)):
            others = sum((t for j, t in enumerate(chosen) if j != i), start=none)
            best = max(range(len(draws[i])), key=lambda k: (others + tallies[i][k]).score(targets))
            chosen[i], result[i] = tallies[i][best], draws[i][best]
    return result


@dataclass(frozen=True)
class _Tally:
    """What a draw gives each split (slices showing each class, slices, slices with foreground)
    and how many slices with foreground it had in all, those lost to guard gaps included."""

    class_slices: np.ndarray
    slices: np.ndarray
    foreground: np.ndarray
    total_foreground: int

    @staticmethod
    def of(labels: np.ndarray, presence: np.ndarray) -> _Tally:
        in_split = [labels == code for code in range(len(SPLITS))]
        has_foreground = np.asarray(presence.any(axis=1))
        return _Tally(
            np.array([presence[s].sum(axis=0) for s in in_split]),
            np.array([s.sum() for s in in_split]),
            np.array([has_foreground[s].sum() for s in in_split]),
            int(has_foreground.sum()),
        )

    @staticmethod
    def empty(num_classes: int) -> _Tally:
        return _Tally(
            np.zeros((len(SPLITS), num_classes), np.int64),
            np.zeros(len(SPLITS), np.int64),
            np.zeros(len(SPLITS), np.int64),
            0,
        )

    def __add__(self, other: _Tally) -> _Tally:
        return _Tally(
            self.class_slices + other.class_slices,
            self.slices + other.slices,
            self.foreground + other.foreground,
            self.total_foreground + other.total_foreground,
        )

    def score(self, targets: np.ndarray) -> tuple[float, ...]:
        """Higher is better, compared in order (see :func:`split_slabs`)."""
        covered = self.class_slices > 0
        lost = self.total_foreground - self.foreground.sum()
        misshare = lost + float(np.abs(self.foreground - targets * self.total_foreground).sum())
        steps = round(misshare / max(1.0, SHARE_STEP * self.total_foreground))
        return (
            int((self.slices > 0).sum()),
            int(covered.sum()),
            int(covered[0].sum()),
            int(covered[2].sum()),
            -steps,
        )
