"""Synthetic phantoms with exact labels, at any size and count, reproducible from a seed.

Each case is a 2-D picture: a large ellipse ("body", class 1) holding one to three small ellipses
("lesion", class 2), with class-dependent intensities, a smooth multiplicative bias field and Gaussian
noise, the three nuisances real scanners add. Tests and scale runs use it because its labels are exact
and its difficulty is controlled.
"""

from __future__ import annotations

import numpy as np
from skimage.draw import ellipse

from privacysf.data.cases import Case

CLASS_NAMES = ["background", "body", "lesion"]


def phantom_case(rng: np.random.Generator, size: int, case_id: str) -> Case:
    mask = np.zeros((size, size), np.int64)
    centre = size / 2 + rng.uniform(-0.08, 0.08, 2) * size
    radii = rng.uniform(0.28, 0.42, 2) * size
    rr, cc = ellipse(
        centre[0], centre[1], radii[0], radii[1], shape=mask.shape, rotation=rng.uniform(0, np.pi)
    )
    mask[rr, cc] = 1
    for _ in range(rng.integers(1, 4)):
        angle = rng.uniform(0, 2 * np.pi)
        distance = rng.uniform(0, 0.5) * min(radii)
        lesion_centre = centre + distance * np.array([np.cos(angle), np.sin(angle)])
        lesion_radii = rng.uniform(0.05, 0.12, 2) * size
        rr, cc = ellipse(
            lesion_centre[0],
            lesion_centre[1],
            lesion_radii[0],
            lesion_radii[1],
            shape=mask.shape,
            rotation=rng.uniform(0, np.pi),
        )
        inside = mask[rr, cc] > 0
        mask[rr[inside], cc[inside]] = 2
    levels = np.array([0.1, rng.uniform(0.45, 0.6), rng.uniform(0.8, 0.95)])
    image = levels[mask]
    yy, xx = np.mgrid[0:size, 0:size] / size
    gx, gy = rng.uniform(-0.3, 0.3, 2)
    bias = 1.0 + gx * (xx - 0.5) + gy * (yy - 0.5)
    image = image * bias + rng.normal(0, 0.06, mask.shape)
    return Case(
        case_id=case_id,
        image=image.astype(np.float32)[..., None],
        mask=mask[..., None],
        spacing=(1.0, 1.0, 1.0),
    )


def phantom_cases(count: int, size: int, seed: int) -> list[Case]:
    rng = np.random.default_rng(seed)
    return [phantom_case(rng, size, f"phantom-{i:04d}") for i in range(count)]
