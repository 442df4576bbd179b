"""Encoded-data analysis: how much of the picture can be read straight off the codes, with no model.

The server lays the tokens it receives out on the token grid in raster order (all it can do without
the key) and looks at each token's norm. Where that map still draws the anatomy, the code leaks it;
the correlation with the image average-pooled to the grid says how much, and re-identification says
whether that is enough to tell which of N candidate images a code came from.
"""

from __future__ import annotations

import numpy as np

from privacysf.attacks.measures import correlation_matrix, reidentification_top1


def token_norm_maps(tokens: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """(N, L, C) tokens -> (N, h, w) token norms in raster order.

    Orthogonal channel mixing leaves token norms unchanged (up to the key's fixed scale), so this
    view is exactly as informative with a mixing-only key as without one.
    """
    return np.linalg.norm(tokens, axis=-1).reshape(len(tokens), *grid)


def pool_to_grid(images: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """(N, 1, H, W) images -> (N, h, w) block means: the image at the resolution of the codes."""
    n, _, height, width = images.shape
    fy, fx = height // grid[0], width // grid[1]
    return images[:, 0].reshape(n, grid[0], fy, grid[1], fx).mean(axis=(2, 4))


def encoded_data_analysis(
    tokens: np.ndarray, images: np.ndarray, grid: tuple[int, int], candidates: int
) -> dict[str, float]:
    """Norm-map correlation with the pooled image and re-identification among ``candidates`` images."""
    norms = token_norm_maps(tokens, grid).reshape(len(tokens), -1)
    pooled = pool_to_grid(images, grid).reshape(len(images), -1)
    per_image = np.abs(np.diag(correlation_matrix(norms, pooled)))
    n = min(candidates, len(tokens))
    pick = np.random.default_rng(0).choice(len(tokens), n, replace=False)
    return {
        "norm_image_correlation": float(per_image.mean()),
        "reid_top1": reidentification_top1(norms[pick], pooled[pick]),
        "reid_chance": 1.0 / n,
        "reid_candidates": n,
    }
