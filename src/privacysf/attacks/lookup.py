"""Attacks and baselines that train no network: what leaked pairs give away before any inversion.

Every inversion figure needs these beside it. On brain slices the mean image alone scores a high SSIM
(large constant background), and within one subject every query has a near-duplicate among the leaked
slices, so an inversion that does not beat a lookup shows nothing:

- **mean image**: the mean of the leaked images, the same guess for every query (no code used);
- **nearest-code lookup**: return the leaked image whose code is nearest to the query's code. A real
  attack, and a key-blind one: orthogonal channel mixing and a fixed token permutation keep every
  distance between codes, so it scores the same with or without them;
- **ridge**: the best linear map from a code to its image, fitted on the leaked pairs in kernel form.
  It too depends on the codes only through their inner products, so the same two keys change nothing;
- **oracle best leaked image**: for each query the leaked image that scores best against the truth.
  Not an attack (it reads the answer) but the ceiling of every lookup: a figure below it could have
  been had by picking among the leaked images.
"""

from __future__ import annotations

import numpy as np

from privacysf.attacks.keyed import nearest_codes
from privacysf.attacks.measures import ssim_matrix

RIDGE_ALPHAS = np.logspace(-4, 2, 13)
"""Ridge penalties tried, relative to the mean diagonal of the leaked codes' Gram matrix."""


def mean_image(leaked: np.ndarray, count: int) -> np.ndarray:
    """The mean leaked image (or one-hot mean for masks), repeated ``count`` times."""
    return np.repeat(leaked.mean(axis=0, keepdims=True), count, axis=0)


def lookup(query_tokens: np.ndarray, leaked_tokens: np.ndarray, leaked: np.ndarray) -> np.ndarray:
    """The leaked image (or mask) whose code is nearest to each query's code."""
    return leaked[nearest_codes(query_tokens, leaked_tokens)]


def loo_errors(x: np.ndarray, y: np.ndarray, alphas: np.ndarray) -> np.ndarray:
    """Leave-one-out mean squared error of centred kernel ridge for each penalty, in closed form.

    With the intercept left unpenalised (both sides centred), the residual of pair i left out is
    ``r_i / (1 - 1/n - H_ii)``, with ``r = y - H y`` and ``H = K (K + αI)^-1`` (tested against refits).
    """
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    values, vectors = np.linalg.eigh(x @ x.T)
    projected = vectors.T @ y
    n = len(x)
    errors = []
    for alpha in alphas:
        leverage = (vectors**2) @ (values / (values + alpha))
        residual = vectors @ (alpha * projected / (values + alpha)[:, None])
        errors.append(float(np.mean((residual / (1 - 1 / n - leverage)[:, None]) ** 2)))
    return np.array(errors)


def ridge(query_tokens: np.ndarray, leaked_tokens: np.ndarray, leaked: np.ndarray) -> np.ndarray:
    """Kernel ridge regression from flattened codes to flattened targets (linear kernel).

    The penalty is picked by the leave-one-out error on the leaked pairs alone, as an attacker without
    the truth would pick it. Targets may be images (k, 1, H, W) or one-hot masks.
    """
    x = leaked_tokens.reshape(len(leaked_tokens), -1).astype(np.float64)
    q = query_tokens.reshape(len(query_tokens), -1).astype(np.float64)
    y = leaked.reshape(len(leaked), -1).astype(np.float64)
    centre, y_mean = x.mean(axis=0), y.mean(axis=0)
    x, q = x - centre, q - centre
    gram = x @ x.T
    alphas = RIDGE_ALPHAS * max(float(np.trace(gram)) / len(gram), 1e-12)
    best = alphas[int(np.argmin(loo_errors(x, y, alphas)))]
    weights = np.linalg.solve(gram + best * np.eye(len(gram)), y - y_mean)
    out = (q @ x.T) @ weights + y_mean
    return out.reshape((len(q),) + leaked.shape[1:]).astype(np.float32)


def oracle_best(truth: np.ndarray, leaked: np.ndarray, data_range: float) -> np.ndarray:
    """For each true image, the leaked image with the highest SSIM against it (reads the answer)."""
    return leaked[ssim_matrix(truth, leaked, data_range).argmax(axis=1)]


def one_hot(masks: np.ndarray, num_classes: int) -> np.ndarray:
    """(N, H, W) labels -> (N, K, H, W) float one-hot, so masks can be averaged and regressed."""
    return (masks[:, None] == np.arange(num_classes)[None, :, None, None]).astype(np.float32)
