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

PSNR_CAP_DB = 100.0
"""Identical images have infinite PSNR; it is capped so results stay finite JSON."""


def image_similarity(reconstructions: np.ndarray, images: np.ndarray, data_range: float) -> dict[str, float]:
    """Mean SSIM and PSNR (MONAI) of (N, 1, H, W) reconstructions against the true images.

    ``data_range`` is the intensity range of the true images (the same for every attack on a
    dataset), so SSIM and PSNR are comparable across attacks.
    """
    x = torch.tensor(np.asarray(reconstructions), dtype=torch.float32)
    y = torch.tensor(np.asarray(images), dtype=torch.float32)
    ssim = SSIMMetric(spatial_dims=2, data_range=data_range, reduction="none")(x, y).flatten()
    psnr = PSNRMetric(max_val=data_range, reduction="none")(x, y).flatten().clamp(max=PSNR_CAP_DB)
    return {"ssim": float(ssim.mean()), "psnr": float(psnr.mean())}


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
