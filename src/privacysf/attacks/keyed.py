"""Attacks on keyed codes: undo a secret token permutation and channel rotation, and link subjects.

A key (orthogonal channel mixing ``tokens @ Q / scale`` and a secret token permutation
``keyed = plain[:, perm]``) is meant to stop the server from reading the codes. These attacks measure
how much of that protection survives an attacker who only looks at the statistics of what arrives:

* ``recover_order_by_regression`` uses k leaked (image, code) pairs. Rotation hides which channel
  carries what, but a least-squares fit on *all* channels of a token (and its norm) is unchanged by
  the key's orthogonal, scaled channel map, so the fraction of a grid cell's intensity that a token
  explains (R²) tells where the token sits far better than the norm correlation of
  ``inversion.recover_order``.
* ``jigsaw`` uses no pairs at all. Tokens of neighbouring cells see overlapping, smooth anatomy, so
  across many codes they co-vary; the inner product of centred tokens is untouched by an orthogonal
  mix, and a spectral embedding of the resulting similarity graph lays the tokens out on the plane,
  up to the grid's rotations and reflections (which no pair-free method can resolve).
* ``procrustes_align`` maps rotated victim codes into a shadow codec's space without pairs, by
  matching whitened per-position statistics, which an unknown rotation changes only by that rotation.
* ``linkage`` asks whether a code's nearest neighbour among other codes belongs to the same
  subject; Euclidean distance between whole codes is invariant to both parts of the key.

Everything here is numpy/scipy on plain arrays, so each step is tested on known answers.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.linalg import eigh
from scipy.optimize import linear_sum_assignment
from scipy.sparse import csr_matrix
from scipy.stats import rankdata, spearmanr

from privacysf.attacks.encoded import pool_to_grid, token_norm_maps
from privacysf.attacks.measures import correlation_matrix

_CHUNK_ELEMENTS = 4_000_000
"""Largest intermediate array (elements) built at once, so L = 1024 and k = 300 stay small in memory."""


# --------------------------------------------------------------------------------------------------
# Grid helpers


def _cell_coordinates(grid: tuple[int, int]) -> np.ndarray:
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


def _order_from_assignment(token_idx: np.ndarray, cell_idx: np.ndarray, size: int) -> np.ndarray:
    order = np.empty(size, dtype=np.int64)
    order[cell_idx] = token_idx
    return order


# --------------------------------------------------------------------------------------------------
# 1. Order recovery from leaked pairs


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
    step = max(1, _CHUNK_ELEMENTS // max(1, r * t.shape[1]))
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
    return _order_from_assignment(rows, cols, n_tokens)


# --------------------------------------------------------------------------------------------------
# 2. Scoring an order


def order_accuracy(order: np.ndarray, true_order: np.ndarray, grid: tuple[int, int]) -> dict[str, float]:
    """How close an estimated order is to the truth, exactly and on the grid.

    ``exact``: fraction of cells holding the right token. ``within_one``: fraction of cells whose
    token truly belongs at most one cell away (Chebyshev distance <= 1, so diagonal neighbours count),
    because a decoder tolerates tokens that are off by one far better than tokens thrown across the
    image. ``median_error_cells``: median Euclidean distance, in cells, between where a token was put
    and where it belongs.
    """
    order, true_order = np.asarray(order), np.asarray(true_order)
    coords = _cell_coordinates(grid)
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


# --------------------------------------------------------------------------------------------------
# 3. Pair-free jigsaw


def mixing_invariant_similarity(tokens: np.ndarray, use_norms: bool = True) -> np.ndarray:
    """(L, L) similarity of received tokens across the N codes that an orthogonal channel mix keeps.

    Each token is centred over the codes; the cosine of two centred tokens, flattened over codes and
    channels, is ``sum x̃_i x̃_j^T`` over codes, in which ``Q Q^T = I`` cancels. With ``use_norms`` the
    Pearson correlation of the token norms across codes (also mix-invariant) is averaged in: it sees
    the brightness the two cells share even when the channels do not line up.
    """
    x = np.asarray(tokens, dtype=np.float64)
    n, n_tokens, _ = x.shape
    centred = (x - x.mean(axis=0, keepdims=True)).transpose(1, 0, 2).reshape(n_tokens, -1)
    length = np.linalg.norm(centred, axis=1)
    centred = np.divide(centred, length[:, None], out=np.zeros_like(centred), where=length[:, None] > 1e-12)
    similarity = centred @ centred.T
    if use_norms:
        norms = np.linalg.norm(x, axis=-1).T  # (L, N)
        similarity = 0.5 * (similarity + correlation_matrix(norms, norms))
    return similarity


def _spectral_embedding(similarity: np.ndarray, neighbours: int) -> np.ndarray:
    """Laplacian eigenmap: eigenvectors 2 and 3 of the normalised Laplacian of a symmetric kNN graph.

    Edges join each token to its ``neighbours`` most similar tokens (either direction), weighted by
    the positive part of the similarity; a faint all-to-all term keeps the graph connected so the
    second eigenvector describes geometry, not a split into components. Returns the (L, 2) embedding
    (eigenvectors 2 and 3, scaled by D^-1/2 as in the random-walk form).
    """
    n_tokens = len(similarity)
    s = similarity.copy()
    np.fill_diagonal(s, -np.inf)
    k = min(max(1, neighbours), n_tokens - 1)
    nearest = np.argpartition(-s, k - 1, axis=1)[:, :k]
    adjacency = np.zeros((n_tokens, n_tokens), dtype=bool)
    adjacency[np.repeat(np.arange(n_tokens), k), nearest.ravel()] = True
    adjacency |= adjacency.T
    faint = 1e-6 / n_tokens  # every pair, so the graph is connected
    rows, cols = np.nonzero(adjacency)
    weights = csr_matrix(
        (np.clip(similarity[rows, cols], 0.0, None) + 1e-3, (rows, cols)), shape=(n_tokens, n_tokens)
    )
    inv_sqrt = 1.0 / np.sqrt(np.asarray(weights.sum(axis=1)).ravel() + faint * (n_tokens - 1))

    def normalised(x: np.ndarray) -> np.ndarray:
        """D^-1/2 (W + faint (11^T - I)) D^-1/2 x, whose top eigenvectors are the Laplacian's bottom."""
        z = inv_sqrt[:, None] * x.reshape(n_tokens, -1)
        out = weights @ z + faint * (z.sum(axis=0, keepdims=True) - z)
        return (inv_sqrt[:, None] * out).reshape(x.shape)

    # A dense solver: Lanczos (ARPACK) failed to converge on real keyed codes at L = 1024, whose top
    # eigenvalues lie close together; a dense eigh of 1024² takes about a second, of 4096² seconds.
    _, vectors = eigh(normalised(np.eye(n_tokens)), subset_by_index=[n_tokens - 3, n_tokens - 1])
    # Ascending order: [3rd, 2nd, 1st (trivial)] of the normalised adjacency, i.e. the Laplacian's
    # eigenvectors 3, 2 and 1 (I - normalised is the normalised Laplacian).
    return vectors[:, [1, 0]] * inv_sqrt[:, None]


def _grid_adjacency(grid: tuple[int, int]) -> csr_matrix:
    """Sparse (L, L) 0/1 matrix of 4-neighbour cells in raster order."""
    h, w = grid
    index = np.arange(h * w).reshape(grid)
    pairs = np.concatenate(
        [
            np.stack([index[:, :-1].ravel(), index[:, 1:].ravel()]),
            np.stack([index[:-1].ravel(), index[1:].ravel()]),
        ],
        axis=1,
    )
    rows, cols = np.r_[pairs[0], pairs[1]], np.r_[pairs[1], pairs[0]]
    return csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(h * w, h * w))


def _neighbour_score(order: np.ndarray, similarity: np.ndarray, cells: csr_matrix) -> float:
    """Sum of similarities of tokens placed on 4-adjacent cells: the jigsaw's own measure of a layout."""
    placed = similarity[np.ix_(order, order)]
    return float(cells.multiply(placed).sum()) / 2.0


def _layout_to_order(
    embedding: np.ndarray,
    similarity: np.ndarray,
    grid: tuple[int, int],
    cells: csr_matrix,
    candidates: int = 5,
) -> np.ndarray:
    """Place tokens on grid cells from a 2-D embedding.

    Eigenvectors 2 and 3 of a square grid share one eigenvalue, so the embedding comes back turned
    by an arbitrary angle. Every 3 degrees a quick placement is scored: tokens sorted by the first
    coordinate are cut into h bands of w and each band is sorted by the second (ranks, not values,
    because eigenmaps warp distances like a cosine). The score is how similar the tokens put on
    adjacent cells are (``_neighbour_score``), a criterion that needs nothing but the similarity.
    For the best few angles the coordinates are rank-normalised onto the grid and assigned
    one-to-one by squared distance (Hungarian algorithm, too slow to run at every angle when
    L = 1024); the best-scoring placement of all is returned.
    """
    h, w = grid
    n_tokens = h * w
    centred = embedding - embedding.mean(axis=0)
    scale = centred.std(axis=0)
    centred = centred / np.where(scale > 1e-12, scale, 1.0)
    placements: list[tuple[float, np.ndarray, np.ndarray]] = []
    for angle in np.deg2rad(np.arange(0.0, 180.0, 3.0)):  # [0, 180) also covers which axis is rows
        c, s = np.cos(angle), np.sin(angle)
        rotated = centred @ np.array([[c, -s], [s, c]])
        bands = np.argsort(rotated[:, 0], kind="stable").reshape(h, w)
        within = np.argsort(rotated[bands, 1], axis=1, kind="stable")
        order = np.take_along_axis(bands, within, axis=1).ravel()
        placements.append((_neighbour_score(order, similarity, cells), order, rotated))
    best_score, best_order = max(placements, key=lambda item: item[0])[:2]
    coords = _cell_coordinates(grid)
    for _, _, rotated in sorted(placements, key=lambda item: -item[0])[:candidates]:
        rows = (rankdata(rotated[:, 0]) - 0.5) / n_tokens * h - 0.5
        cols = (rankdata(rotated[:, 1]) - 0.5) / n_tokens * w - 0.5
        cost = (rows[:, None] - coords[None, :, 0]) ** 2 + (cols[:, None] - coords[None, :, 1]) ** 2
        token_idx, cell_idx = linear_sum_assignment(cost)
        order = _order_from_assignment(token_idx, cell_idx, n_tokens)
        score = _neighbour_score(order, similarity, cells)
        if score > best_score:
            best_score, best_order = score, order
    return best_order


def _refine_by_swaps(
    order: np.ndarray, similarity: np.ndarray, cells: csr_matrix, rounds: int = 200
) -> np.ndarray:
    """Greedy local search: swap pairs of tokens while that raises ``_neighbour_score``.

    The spectral placement gets the coarse layout right but often mixes up tokens locally. For every
    cell pair (p, q) the gain of exchanging their tokens is computed at once from ``G = S' A`` (S'
    the similarity of placed tokens, A the cell adjacency): gain = G[q,p] - G[p,p] + G[p,q] - G[q,q]
    + 2 A[p,q] S'[p,q] (the last term because adjacent p, q stay adjacent). Each round applies, best
    first, each cell's best positive swap whose cells and their neighbours no earlier swap of the round
    touched (so every applied gain is exact), until none is left or ``rounds`` runs out.
    """
    order = order.copy()
    sim = similarity.copy()
    np.fill_diagonal(sim, 0.0)
    n_tokens = len(order)
    adjacency = cells.tocsr()
    neighbours = np.split(adjacency.indices, adjacency.indptr[1:-1])
    for _ in range(rounds):
        placed = sim[np.ix_(order, order)]
        spread = np.asarray(adjacency @ placed.T).T  # G[a, p] = sum over neighbours r of p of S'[a, r]
        own = np.diag(spread)
        gain = spread.T - own[:, None] + spread - own[None, :]
        gain += 2.0 * adjacency.multiply(placed).toarray()
        np.fill_diagonal(gain, 0.0)
        partner = gain.argmax(axis=1)
        best = gain[np.arange(n_tokens), partner]
        if best.max() <= 1e-9:
            break
        touched = np.zeros(n_tokens, dtype=bool)
        for p in np.argsort(-best, kind="stable"):
            if best[p] <= 1e-9:
                break
            q = partner[p]
            block = np.r_[p, q, neighbours[p], neighbours[q]]
            if touched[block].any():
                continue
            order[[p, q]] = order[[q, p]]
            touched[block] = True
    return order


def jigsaw(
    tokens: np.ndarray,
    grid: tuple[int, int],
    neighbours: int = 4,
    true_order: np.ndarray | None = None,
    use_norms: bool = True,
    refine: bool = True,
) -> dict[str, object]:
    """Reassemble permuted, channel-mixed tokens with no leaked pairs, from (N, L, C) codes alone.

    The recovery uses only ``tokens``: a mix-invariant similarity (``mixing_invariant_similarity``),
    a spectral embedding of its kNN graph (``neighbours`` per token), a one-to-one placement on the
    grid and, with ``refine``, greedy token swaps that put more similar tokens side by side.
    ``true_order`` is used only to score the result afterwards.

    Returns a dict with ``order`` (L,) (``tokens[:, order]`` in estimated raster order, up to a grid
    symmetry), ``embedding`` (L, 2) and ``chance`` (mean number of 4-neighbours / (L - 1), the
    precision of a random guess). With ``true_order`` it also holds ``neighbour_precision`` (fraction
    of tokens whose most similar other token is a true 4-neighbour), ``layout_distance_corr``
    (Spearman correlation of pairwise embedding distances with true grid distances) and ``exact``,
    ``within_one``, ``median_error_cells`` and ``symmetry`` from ``order_accuracy_up_to_symmetry``;
    without it those are None.
    """
    h, w = grid
    n_tokens = h * w
    if np.asarray(tokens).shape[1] != n_tokens:
        raise ValueError(f"{np.asarray(tokens).shape[1]} tokens do not fill a {h}x{w} grid")
    similarity = mixing_invariant_similarity(tokens, use_norms=use_norms)
    embedding = _spectral_embedding(similarity, neighbours)
    cells = _grid_adjacency(grid)
    order = _layout_to_order(embedding, similarity, grid, cells)
    if refine:
        order = _refine_by_swaps(order, similarity, cells)
    degree = 4 * h * w - 2 * h - 2 * w  # sum over cells of the number of 4-neighbours (2 * edges)
    result: dict[str, object] = {
        "order": order,
        "embedding": embedding,
        "chance": float(degree / n_tokens / max(1, n_tokens - 1)),
        "neighbour_precision": None,
        "layout_distance_corr": None,
        "exact": None,
        "within_one": None,
        "median_error_cells": None,
        "symmetry": None,
    }
    if true_order is None:
        return result
    true_cell = _cell_coordinates(grid)[np.argsort(np.asarray(true_order))]  # received token -> (row, col)
    s = similarity.copy()
    np.fill_diagonal(s, -np.inf)
    best = s.argmax(axis=1)
    result["neighbour_precision"] = float(np.mean(np.abs(true_cell[best] - true_cell).sum(axis=1) == 1))
    upper = np.triu_indices(n_tokens, 1)
    emb_dist = np.linalg.norm(embedding[:, None] - embedding[None], axis=-1)[upper]
    grid_dist = np.linalg.norm((true_cell[:, None] - true_cell[None]).astype(np.float64), axis=-1)[upper]
    result["layout_distance_corr"] = float(spearmanr(emb_dist, grid_dist)[0])
    result.update(order_accuracy_up_to_symmetry(order, true_order, grid))
    return result


# --------------------------------------------------------------------------------------------------
# 4. Pair-free rotation alignment


def _whitening(flat: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, symmetric inverse square root and square root of the channel covariance, padded to ``dim``.

    The symmetric root matters: if ``y = x Q`` then ``Σ_y^{-1/2} = Q^T Σ_x^{-1/2} Q``, so whitened
    codes still differ by exactly ``Q`` and Procrustes can find it. Directions of (near) zero variance
    are left at zero rather than blown up.
    """
    mean = flat.mean(axis=0)
    cov = np.cov(flat - mean, rowvar=False).reshape(flat.shape[1], flat.shape[1])
    values, vectors = np.linalg.eigh(cov)
    floor = 1e-10 * max(float(values.max()), 1e-30)
    ok = values > floor
    inv = np.where(ok, 1.0 / np.sqrt(np.where(ok, values, 1.0)), 0.0)
    root = np.sqrt(np.clip(values, 0.0, None))
    inv_sqrt = (vectors * inv) @ vectors.T
    sqrt = (vectors * root) @ vectors.T
    c = flat.shape[1]
    inv_pad, sqrt_pad = np.zeros((dim, dim)), np.zeros((dim, dim))
    inv_pad[:c, :c], sqrt_pad[:c, :c] = inv_sqrt, sqrt
    return mean, inv_pad, sqrt_pad


def _rotation_statistics(white: np.ndarray) -> np.ndarray:
    """Per-position statistics of whitened (N, L, D) codes that an orthogonal R maps to ``stats @ R``.

    The mean map over codes is the key ingredient. A per-channel std map would not do (a rotation
    mixes channels inside the square root), so the second block is the norm-weighted mean map
    ``E[z ||z||]``, also exactly equivariant since the norm is rotation-invariant. Each block is
    scaled to unit Frobenius norm so neither dominates the fit.
    """
    norm = np.linalg.norm(white, axis=-1, keepdims=True)
    blocks = [white.mean(axis=0), (white * norm).mean(axis=0)]
    return np.concatenate([b / max(float(np.linalg.norm(b)), 1e-12) for b in blocks], axis=0)


def procrustes_align(victim: np.ndarray, shadow: np.ndarray) -> np.ndarray:
    """Map (N, L, C) victim tokens into a shadow codec's (M, L, C') space, undoing an unknown rotation.

    No pairs are needed, only that victim and shadow codes describe similar images on the same token
    grid. Both sides are whitened (mean and covariance over all tokens of all codes), which removes
    the key's scale and leaves an orthogonal ambiguity; the orthogonal R minimising
    ``||A R - B||`` between per-position statistics of the whitened codes (orthogonal Procrustes,
    one SVD) resolves it; the result is de-whitened with the shadow's covariance and mean. Unlike
    ``shadow.align_channels`` (channel order, sign and scale only) this undoes any rotation. Channel
    counts may differ: both sides are zero-padded to the larger, and the result is truncated to C'.
    Returns float32 (N, L, C').
    """
    v = np.asarray(victim, dtype=np.float64)
    s = np.asarray(shadow, dtype=np.float64)
    if v.shape[1] != s.shape[1]:
        raise ValueError(f"victim has {v.shape[1]} token positions, shadow {s.shape[1]}")
    c_v, c_s = v.shape[-1], s.shape[-1]
    dim = max(c_v, c_s)
    v_mean, v_inv, _ = _whitening(v.reshape(-1, c_v), dim)
    s_mean, s_inv, s_sqrt = _whitening(s.reshape(-1, c_s), dim)
    v_white = np.zeros(v.shape[:2] + (dim,))
    v_white[..., :c_v] = v - v_mean
    v_white = v_white @ v_inv
    s_white = np.zeros(s.shape[:2] + (dim,))
    s_white[..., :c_s] = s - s_mean
    s_white = s_white @ s_inv
    u, _, vt = np.linalg.svd(_rotation_statistics(v_white).T @ _rotation_statistics(s_white))
    rotation = u @ vt
    aligned = (v_white @ rotation @ s_sqrt)[..., :c_s] + s_mean
    return aligned.astype(np.float32)


# --------------------------------------------------------------------------------------------------
# 5. Linkage


def nearest_codes(query: np.ndarray, pool: np.ndarray, excluded: np.ndarray | None = None) -> np.ndarray:
    """Index in ``pool`` (P, L, C) of the Euclidean-nearest code to each of ``query`` (Q, L, C).

    Distances are between whole flattened codes, which an orthogonal channel mix and a fixed token
    permutation (the same key on both sides) leave unchanged, so the key does not hide who is close
    to whom. ``excluded`` (Q, P), when given, marks pool codes a query may not be matched to.
    """
    q = np.asarray(query, dtype=np.float64).reshape(len(query), -1)
    p = np.asarray(pool, dtype=np.float64).reshape(len(pool), -1)
    p_sq = (p**2).sum(axis=1)
    out = np.empty(len(q), dtype=np.int64)
    step = max(1, _CHUNK_ELEMENTS // max(1, len(p)))
    for start in range(0, len(q), step):
        block = q[start : start + step]
        dist = p_sq[None, :] - 2.0 * block @ p.T  # ||q||² is constant per row
        if excluded is not None:
            dist[excluded[start : start + step]] = np.inf
        out[start : start + step] = dist.argmin(axis=1)
    return out


def linkage(
    query: np.ndarray,
    query_groups: np.ndarray,
    pool: np.ndarray,
    pool_groups: np.ndarray,
    excluded: np.ndarray | None = None,
) -> dict[str, float]:
    """Does each query code's nearest pool code come from the same subject?

    ``top1`` is that fraction; ``chance`` is what picking a pool code at random would give, the mean
    over queries of (pool codes of the query's group / pool size). ``excluded`` (Q, P) takes pool
    codes out of a query's reach (itself, its neighbouring slices); a query with none left is skipped.
    """
    query_groups, pool_groups = np.asarray(query_groups), np.asarray(pool_groups)
    allowed = np.ones((len(query_groups), len(pool_groups)), bool) if excluded is None else ~excluded
    scored = allowed.any(axis=1)
    if not scored.any():
        return {"top1": 0.0, "chance": 0.0, "queries": 0}
    nearest = nearest_codes(query[scored], pool, None if excluded is None else excluded[scored])
    same = pool_groups[nearest] == query_groups[scored]
    own = (query_groups[scored, None] == pool_groups[None, :]) & allowed[scored]
    share = own.sum(axis=1) / allowed[scored].sum(axis=1)
    return {"top1": float(same.mean()), "chance": float(share.mean()), "queries": int(scored.sum())}
