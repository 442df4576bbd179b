"""How well an attack did: image similarity, mask overlap, re-identification and ROC AUC.

Each measure is a plain function of arrays, checked in the tests on cases with known answers
(identical images give SSIM 1, separable scores give AUC 1), so attack figures rest on code that was
itself tested.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.metrics import PSNRMetric, SSIMMetric
from sklearn.metrics import roc_auc_score

CHUNK_ELEMENTS = 4_000_000
"""Largest intermediate array (elements) an attack builds at once, so L = 1024 and k = 300 stay small."""

PSNR_CAP_DB = 100.0
"""Identical images have infinite PSNR; it is capped so results stay finite JSON."""


def per_image_ssim(reconstructions: np.ndarray, images: np.ndarray, data_range: float) -> np.ndarray:
    """SSIM (MONAI) of each of (N, 1, H, W) reconstructions against its true image, as (N,)."""
    x = torch.tensor(np.asarray(reconstructions), dtype=torch.float32)
    y = torch.tensor(np.asarray(images), dtype=torch.float32)
    return (
        torch.as_tensor(SSIMMetric(spatial_dims=2, data_range=data_range, reduction="none")(x, y))
        .flatten()
        .numpy()
    )


SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03
"""MONAI's SSIM defaults (Gaussian window), which :func:`ssim_matrix` reproduces."""


def _blur(x: torch.Tensor) -> torch.Tensor:
    """The SSIM window as two 1-D Gaussian passes ('valid'), equal to MONAI's 2-D product kernel."""
    t = torch.arange(SSIM_WINDOW, dtype=torch.float32) - SSIM_WINDOW // 2
    g = torch.exp(-(t**2) / (2 * SSIM_SIGMA**2))
    g = g / g.sum()
    x = torch.nn.functional.conv2d(x, g.view(1, 1, -1, 1))
    return torch.nn.functional.conv2d(x, g.view(1, 1, 1, -1))


def ssim_matrix(truth: np.ndarray, candidates: np.ndarray, data_range: float) -> np.ndarray:
    """SSIM of every (N, 1, H, W) true image against every (M, 1, H, W) candidate, as (N, M).

    The same value as :func:`per_image_ssim` pair by pair, but each image's own window statistics are
    computed once and only the cross term per pair, with a separable window: the oracle best leaked
    image over 155 queries × 222 candidates takes seconds instead of minutes.
    """
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    x = torch.tensor(np.asarray(candidates), dtype=torch.float32)
    mu_x = _blur(x)
    var_x = _blur(x * x) - mu_x**2
    out = np.empty((len(truth), len(x)), np.float32)
    with torch.no_grad():
        for i, image in enumerate(np.asarray(truth, np.float32)):
            y = torch.from_numpy(image)[None]
            mu_y = _blur(y)
            var_y = _blur(y * y) - mu_y**2
            cov = _blur(x * y) - mu_x * mu_y
            ssim = ((2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1)) * (
                (2 * cov + c2) / (var_x + var_y + c2)
            )
            out[i] = ssim.mean(dim=(1, 2, 3)).numpy()
    return out


def image_similarity(reconstructions: np.ndarray, images: np.ndarray, data_range: float) -> dict:
    """Mean SSIM and PSNR (MONAI) of (N, 1, H, W) reconstructions against the true images.

    ``data_range`` is the intensity range of the true images (the same for every attack on a
    dataset), so SSIM and PSNR are comparable across attacks. ``per_query`` keeps each query's SSIM so
    intervals can be drawn over queries, and over the queries of several seeds pooled.
    """
    x = torch.tensor(np.asarray(reconstructions), dtype=torch.float32)
    y = torch.tensor(np.asarray(images), dtype=torch.float32)
    ssim = per_image_ssim(reconstructions, images, data_range)
    psnr = (
        torch.as_tensor(PSNRMetric(max_val=data_range, reduction="none")(x, y))
        .flatten()
        .clamp(max=PSNR_CAP_DB)
    )
    return {"ssim": float(ssim.mean()), "psnr": float(psnr.mean()), "per_query": np.round(ssim, 4).tolist()}


def mean_interval(values: np.ndarray, resamples: int = 1000, seed: int = 0) -> dict[str, float]:
    """Mean with a 95% percentile-bootstrap interval over the given per-query values."""
    values = np.asarray(values, np.float64)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (resamples, len(values)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {"mean": float(values.mean()), "ci_low": float(low), "ci_high": float(high), "n": len(values)}


def correlation_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of every row of ``a`` (N, D) with every row of ``b`` (M, D); flat rows give 0."""
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    na, nb = np.linalg.norm(a, axis=1, keepdims=True), np.linalg.norm(b, axis=1, keepdims=True)
    a = np.divide(a, na, out=np.zeros_like(a), where=na > 1e-12)
    b = np.divide(b, nb, out=np.zeros_like(b), where=nb > 1e-12)
    return a @ b.T


def reidentification_top1(queries: np.ndarray, candidates: np.ndarray) -> float:
    """Fraction of queries whose most correlated candidate is their own (row i belongs to row i).

    Correlation counts in absolute value: an attacker without pairs does not know whether a code
    map runs with the image or against it. Chance is 1 / number of candidates.
    """
    scores = np.abs(
        correlation_matrix(queries.reshape(len(queries), -1), candidates.reshape(len(candidates), -1))
    )
    return float(np.mean(scores.argmax(axis=1) == np.arange(len(queries))))


def auc_with_interval(
    member_scores: np.ndarray, nonmember_scores: np.ndarray, resamples: int, seed: int = 0
) -> dict[str, float]:
    """ROC AUC of "higher score = member" with a 95% percentile-bootstrap interval."""
    labels = np.r_[np.ones(len(member_scores)), np.zeros(len(nonmember_scores))]
    scores = np.r_[member_scores, nonmember_scores]
    auc = float(roc_auc_score(labels, scores))
    rng = np.random.default_rng(seed)
    members, nonmembers = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    draws = []
    for _ in range(resamples):
        pick = np.r_[rng.choice(members, len(members)), rng.choice(nonmembers, len(nonmembers))]
        draws.append(roc_auc_score(labels[pick], scores[pick]))
    low, high = np.percentile(draws, [2.5, 97.5]) if draws else (auc, auc)
    return {
        "auc": auc,
        "ci_low": float(low),
        "ci_high": float(high),
        "members": len(members),
        "nonmembers": len(nonmembers),
    }
