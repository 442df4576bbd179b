"""Membership inference against the mapping network, with true non-members.

Members are the code pairs the mapper was trained on; non-members are pairs from the test split,
which no network of the run ever trained on. Both attacks see only what the server has: the mapper
and code pairs.

- **loss threshold** (Yeom et al., 2018): a pair is called a member when the mapper's error on it is
  low; the ROC AUC sweeps every threshold.
- **shadow model** (Shokri et al., 2017): the server trains a shadow mapper of the same recipe on half
  of the validation pairs it holds, learns from the shadow's in/out pairs what member features look
  like (error, error under input noise, output magnitude), and applies that classifier to the target.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from privacysf.attacks.measures import auc_with_interval
from privacysf.attacks.setting import Received
from privacysf.config import ExperimentConfig
from privacysf.exchange import CodeBatch, encode_codes
from privacysf.server import MappingServer

NOISE_STD = 0.05


def pair_features(server: MappingServer, images: np.ndarray, masks: np.ndarray, seed: int = 0) -> np.ndarray:
    """(N, 3) features per code pair: mapping error, error with noisy input, mean output magnitude."""
    x, y = torch.from_numpy(images), torch.from_numpy(masks)
    g = torch.Generator().manual_seed(seed)
    clean = server.predict_tokens(x).cpu()
    noisy = server.predict_tokens(x + NOISE_STD * torch.randn(x.shape, generator=g)).cpu()
    return np.stack(
        [
            (clean - y).pow(2).mean(dim=(1, 2)).numpy(),
            (noisy - y).pow(2).mean(dim=(1, 2)).numpy(),
            clean.abs().mean(dim=(1, 2)).numpy(),
        ],
        axis=1,
    )


def shadow_classifier(in_features: np.ndarray, out_features: np.ndarray) -> LogisticRegression:
    """A member/non-member classifier learnt from a shadow mapper's own in and out pairs."""
    features = np.log(np.r_[in_features, out_features] + 1e-12)
    labels = np.r_[np.ones(len(in_features)), np.zeros(len(out_features))]
    return LogisticRegression(max_iter=1000).fit(features, labels)


def shadow_scores(classifier: LogisticRegression, features: np.ndarray) -> np.ndarray:
    return classifier.predict_proba(np.log(features + 1e-12))[:, 1]


def membership_attacks(
    server: MappingServer,
    cfg: ExperimentConfig,
    grid: tuple[int, int],
    scan: str,
    members: Received,
    val: Received,
    nonmembers: Received,
) -> dict:
    """Loss-threshold and shadow-model attacks on balanced members (train) vs non-members (test).

    On a split by subject the non-members are another subject (often another scanner), so the AUC
    mixes membership with domain shift: it is an upper bound on what membership alone gives away.
    """
    rng = np.random.default_rng(cfg.train.seed)
    n = min(len(members.images), len(nonmembers.images))
    chosen = rng.choice(len(members.images), n, replace=False)
    target_in = pair_features(server, members.images[chosen], members.masks[chosen])
    out_chosen = rng.choice(len(nonmembers.images), n, replace=False)
    target_out = pair_features(server, nonmembers.images[out_chosen], nonmembers.masks[out_chosen])
    results: dict[str, object] = {
        "loss_threshold": auc_with_interval(-target_in[:, 0], -target_out[:, 0], cfg.attack.bootstrap)
    }
    half = len(val.images) // 2
    if half < 2:
        results["shadow_model"] = {
            "skipped": f"only {len(val.images)} validation pairs to build a shadow from"
        }
        return results
    order = rng.permutation(len(val.images))
    inside, outside = order[:half], order[half:]

    def message(tokens: np.ndarray, kind: str) -> bytes:
        return encode_codes(CodeBatch(tokens, grid, kind, scan=scan), "float32")

    shadow = MappingServer(cfg.mapper, cfg.augment, cfg.train.updated(progress=False))
    shadow_in = (message(val.images[inside], "image"), message(val.masks[inside], "mask"))
    shadow.fit(*shadow_in, *shadow_in)
    classifier = shadow_classifier(
        pair_features(shadow, val.images[inside], val.masks[inside]),
        pair_features(shadow, val.images[outside], val.masks[outside]),
    )
    results["shadow_model"] = auc_with_interval(
        shadow_scores(classifier, target_in), shadow_scores(classifier, target_out), cfg.attack.bootstrap
    )
    return results
