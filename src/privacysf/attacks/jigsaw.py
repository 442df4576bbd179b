"""A pair-free jigsaw: lay out the tokens of permuted, channel-mixed codes on their grid.

Tokens of neighbouring cells see overlapping, smooth anatomy, so across many codes they co-vary; the
inner product of centred tokens is untouched by an orthogonal channel mix, and a spectral embedding
of the resulting similarity graph lays the tokens out on the plane, up to the grid's rotations and
reflections (which no pair-free method can resolve). Everything is numpy/scipy on plain arrays, so
each step is tested on known answers.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import eigh
from scipy.optimize import linear_sum_assignment
from scipy.sparse import csr_matrix
from scipy.stats import rankdata, spearmanr

from privacysf.attacks.measures import correlation_matrix
from privacysf.attacks.token_order import (
    cell_coordinates,
    order_accuracy_up_to_symmetry,
    order_from_assignment,
)


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
    coords = cell_coordinates(grid)
    for _, _, rotated in sorted(placements, key=lambda item: -item[0])[:candidates]:
        rows = (rankdata(rotated[:, 0]) - 0.5) / n_tokens * h - 0.5
        cols = (rankdata(rotated[:, 1]) - 0.5) / n_tokens * w - 0.5
        cost = (rows[:, None] - coords[None, :, 0]) ** 2 + (cols[:, None] - coords[None, :, 1]) ** 2
        token_idx, cell_idx = linear_sum_assignment(cost)
        order = order_from_assignment(token_idx, cell_idx, n_tokens)
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
    true_cell = cell_coordinates(grid)[np.argsort(np.asarray(true_order))]  # received token -> (row, col)
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
