"""Attacks that need no token order: undo a secret channel rotation, and link codes to subjects.

* ``procrustes_align`` maps rotated victim codes into a shadow codec's space without pairs, by
  matching whitened per-position statistics, which an unknown rotation changes only by that rotation.
* ``linkage`` asks whether a code's nearest neighbour among other codes belongs to the same
  subject; Euclidean distance between whole codes is invariant to both parts of a key (orthogonal
  channel mixing and a fixed token permutation).

The attacks on the token order are in ``token_order`` (from leaked pairs) and ``jigsaw`` (pair-free).
"""

from __future__ import annotations

import numpy as np

from privacysf.attacks.measures import CHUNK_ELEMENTS


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
    step = max(1, CHUNK_ELEMENTS // max(1, len(p)))
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
