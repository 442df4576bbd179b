"""Shadow-codec attack: no leaked pairs, only public data of the same modality.

The attacker trains its own codec of the centers' published design on a different public dataset
(its own encoder and decoder), then tries to read the victim's codes with its decoder. The two code
spaces are unrelated up to whatever the shared architecture and objective make them agree on, so the
attacker aligns them without pairs: each received channel is standardised to the statistics of a
shadow channel, channels are matched (with sign) by the correlation of their mean maps over many
codes, and the shadow decoder reads the result. A secret token permutation scrambles those mean
maps; the attacker has no pairs to undo it and decodes in raster order.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from privacysf.attacks.measures import correlation_matrix


def align_channels(victim: np.ndarray, shadow: np.ndarray) -> np.ndarray:
    """Map (N, L, C) victim tokens into the shadow code space by moment and mean-map matching."""
    v_mean, v_std = victim.mean(axis=(0, 1)), victim.std(axis=(0, 1)) + 1e-6
    s_mean, s_std = shadow.mean(axis=(0, 1)), shadow.std(axis=(0, 1)) + 1e-6
    standard = (victim - v_mean) / v_std
    corr = correlation_matrix(standard.mean(axis=0).T, ((shadow - s_mean) / s_std).mean(axis=0).T)
    victim_idx, shadow_idx = linear_sum_assignment(-np.abs(corr))
    aligned = np.zeros(victim.shape[:2] + (shadow.shape[-1],), np.float32)
    for v, s in zip(victim_idx, shadow_idx, strict=True):
        sign = 1.0 if corr[v, s] >= 0 else -1.0
        aligned[..., s] = sign * standard[..., v] * s_std[s] + s_mean[s]
    return aligned
