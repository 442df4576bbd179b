"""Where does each token of a permuted code sit? Recovery from leaked pairs, and its scoring.

A key's secret token permutation (``keyed = plain[:, perm]``) is meant to hide which grid cell a
token describes. Rotation by the key's orthogonal channel mix hides which channel carries what, but
a least-squares fit on *all* channels of a token (and its norm) is unchanged by that map, so the
fraction of a grid cell's intensity that a token explains (R²) over k leaked (image, code) pairs
tells where the token sits, far better than the norm correlation of ``inversion.recover_order``.
Scores count exact and within-one placements, also up to the grid's rotations and reflections
(what a pair-free layout such as :func:`privacysf.attacks.jigsaw.jigsaw` can at best resolve).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.optimize import linear_sum_assignment

from privacysf.attacks.encoded import pool_to_grid, token_norm_maps
from privacysf.attacks.measures import CHUNK_ELEMENTS


def cell_coordinates(grid: tuple[int, int]) -> np.ndarray:
    """(L, 2) row/column of each cell in raster order."""
    rows, cols = np.divmod(np.arange(grid[0] * grid[1]), grid[1])
    return np.stack([rows, cols], axis=1)


def _neighbour_mean(pooled: np.ndarray) -> np.ndarray:
    """(k, h, w) -> mean of each cell's existing 4-neighbours (edges and corners average fewer)."""
    padded = np.pad(pooled, ((0, 0), (1, 1), (1, 1)))
    ones = np.pad(np.ones(pooled.shape[1:]), 1)
    total = padded[:, :-2, 1:-1] + padded[:, 2:, 1:-1] + padded[:, 1:-1, :-2] + padded[:, 1:-1, 2:]
    count = ones[:-2, 1:-1] + ones[2:, 1:-1] + ones[1:-1, :-2] + ones[1:-1, 2:]
    return total / np.maximum(count, 1.0)


def order_from_assignment(token_idx: np.ndarray, cell_idx: np.ndarray, size: int) -> np.ndarray:
    order = np.empty(size, dtype=np.int64)
    order[cell_idx] = token_idx
    return order


def _explained_variance(features: np.ndarray, targets: np.ndarray, max_rank: int) -> np.ndarray:
    """R² of every target column regressed on every token's features, all (j, p) at once.

    ``features`` is (L, k, F), ``targets`` (k, P). Features and targets are centred over the k pairs
    (which absorbs the constant column); an orthonormal basis of each token's centred features comes
    from a thin SVD, keeping at most ``max_rank`` directions so that with few pairs the fit cannot
    explain every target perfectly (with rank k - 1 every R² would be 1 and carry no information).
    Returns (L, P) scores in [0, 1].
    """
    feats = features - features.mean(axis=1, keepdims=True)
    t = targets - targets.mean(axis=0, keepdims=True)
    t_norm = np.linalg.norm(t, axis=0)
    t = np.divide(t, t_norm, out=np.zeros_like(t), where=t_norm > 1e-12)
    basis, sing, _ = np.linalg.svd(feats, full_matrices=False)  # (L, k, r), (L, r)
    rank = min(max_rank, basis.shape[-1])
    basis, sing = basis[..., :rank], sing[..., :rank]
    keep = sing > 1e-8 * np.maximum(sing[..., :1], 1e-30)  # drop directions of (numerically) zero variance
    basis = basis * keep[:, None, :]
    n_tokens, k, r = basis.shape
    scores = np.empty((n_tokens, t.shape[1]))
    step = max(1, CHUNK_ELEMENTS // max(1, r * t.shape[1]))
    for start in range(0, n_tokens, step):
        chunk = basis[start : start + step]  # (j, k, r)
        proj = chunk.transpose(0, 2, 1).reshape(-1, k) @ t  # (j * r, P), one BLAS call
        scores[start : start + step] = (proj**2).reshape(len(chunk), r, -1).sum(axis=1)
    return scores


def recover_order_by_regression(
    tokens: np.ndarray, targets: np.ndarray, grid: tuple[int, int], neighbour_term: bool = False
) -> np.ndarray:
    """Estimate where each received token sits on the grid from k leaked (target, code) pairs.

    ``tokens`` (k, L, C) are the keyed codes of the leaked pairs, ``targets`` (k, 1, H, W) their images
    (or foreground fractions). For each token j the features across the k pairs are its C channels,
    its norm and a constant; for each grid cell p the target is the pooled image at p. The score of
    (j, p) is the R² of a least-squares fit of the target on the features: the key's orthogonal
    channel mix and scale change neither the span of the channels nor the norm's, hence not R², which
    is why this beats correlating the norm alone. With ``neighbour_term`` the R² against the
    4-neighbour mean of the pooled image is added, meant to keep a token near its cell when its own
    cell's fit is noisy; it is off by default because on smooth synthetic codes it cost a few points
    of exact accuracy (it blurs the score between neighbouring cells) without helping within-one.
    Tokens and cells are then matched one-to-one (Hungarian algorithm, maximising the total score).
    Works for any k: with fewer pairs than features the fit keeps only the strongest ``k - 2``
    feature directions (with k - 1 every fit would be perfect and every R² 1).

    Returns ``order`` (L,) with ``order[p]`` the received token placed at cell p, i.e.
    ``tokens[:, order]`` is in estimated raster order (the true answer is ``np.argsort(perm)``).
    """
    tokens = np.asarray(tokens, dtype=np.float64)
    k, n_tokens, _ = tokens.shape
    if n_tokens != grid[0] * grid[1]:
        raise ValueError(f"{n_tokens} tokens do not fill a {grid[0]}x{grid[1]} grid")
    norms = token_norm_maps(tokens, grid).reshape(k, n_tokens)
    features = np.concatenate([tokens, norms[..., None]], axis=-1).transpose(1, 0, 2)  # (L, k, C+1)
    max_rank = max(1, k - 2)
    pooled = pool_to_grid(np.asarray(targets, dtype=np.float64), grid)  # (k, h, w)
    scores = _explained_variance(features, pooled.reshape(k, -1), max_rank)
    if neighbour_term:
        scores = scores + _explained_variance(features, _neighbour_mean(pooled).reshape(k, -1), max_rank)
    rows, cols = linear_sum_assignment(scores, maximize=True)
    return order_from_assignment(rows, cols, n_tokens)


def order_accuracy(order: np.ndarray, true_order: np.ndarray, grid: tuple[int, int]) -> dict[str, float]:
    """How close an estimated order is to the truth, exactly and on the grid.

    ``exact``: fraction of cells holding the right token. ``within_one``: fraction of cells whose
    token truly belongs at most one cell away (Chebyshev distance <= 1, so diagonal neighbours count),
    because a decoder tolerates tokens that are off by one far better than tokens thrown across the
    image. ``median_error_cells``: median Euclidean distance, in cells, between where a token was put
    and where it belongs.
    """
    order, true_order = np.asarray(order), np.asarray(true_order)
    coords = cell_coordinates(grid)
    true_cell = np.argsort(true_order)  # received token -> its true cell
    placed_true = coords[true_cell[order]]  # true cell of the token placed at each cell
    diff = np.abs(placed_true - coords)
    return {
        "exact": float(np.mean(order == true_order)),
        "within_one": float(np.mean(diff.max(axis=1) <= 1)),
        "median_error_cells": float(np.median(np.sqrt((diff**2).sum(axis=1)))),
    }


def _grid_symmetries(grid: tuple[int, int]) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """The dihedral maps of an (h, w) array that keep its shape: 8 for a square grid, 4 otherwise."""
    maps = {
        "identity": lambda a: a,
        "rot180": lambda a: np.rot90(a, 2),
        "flip_rows": lambda a: a[::-1],
        "flip_cols": lambda a: a[:, ::-1],
    }
    if grid[0] == grid[1]:
        maps |= {
            "rot90": lambda a: np.rot90(a, 1),
            "rot270": lambda a: np.rot90(a, 3),
            "transpose": lambda a: a.T,
            "antitranspose": lambda a: np.rot90(a, 2).T,
        }
    return maps


def order_accuracy_up_to_symmetry(
    order: np.ndarray, true_order: np.ndarray, grid: tuple[int, int]
) -> dict[str, float | str]:
    """``order_accuracy`` for the best rotation/reflection of the estimated layout, and which one.

    A pair-free layout only knows which tokens are neighbours, not which way is up, so it is scored
    against every symmetry of the grid (8 for a square grid, the 4 that keep the shape otherwise) and
    the best is reported (highest ``exact``, ties broken by ``within_one``), with its name.
    """
    layout = np.asarray(order).reshape(grid)
    best: dict[str, float | str] | None = None
    for name, transform in _grid_symmetries(grid).items():
        result: dict[str, float | str] = {
            **order_accuracy(np.ascontiguousarray(transform(layout)).ravel(), true_order, grid),
            "symmetry": name,
        }
        if best is None or (result["exact"], result["within_one"]) > (best["exact"], best["within_one"]):
            best = result
    assert best is not None
    return best
