"""The attacker's answer to per-query shifts: put every code back in a shift-free position.

With ``key.per_query_shift`` each code reaches the server rolled by a fresh random shift of whole
tokens, so two codes of one image no longer line up and a distance between them is no longer a
distance between what they encode. But the family is public, and an attacker can compute the same
canonical form of every code whatever its shift: :func:`recentre` rolls each code so that the
circular centroid of its token norms sits in the middle of the grid. For integer shifts the centroid
moves by exactly the shift, so every shifted copy of one code recentres to the same code. Lookup and
linkage then compare codes as they would unshifted ones. Inversion learns recentred code -> image,
where each pair keeps its own offset between the two (the recentring moves the code, not the pixels),
so it is a lower bound of what a cleverer alignment would recover.
"""

from __future__ import annotations

import numpy as np

from privacysf.exchange.wire import roll_tokens


def recentring_shifts(tokens: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """(N, 2) shifts that put the circular centroid of each code's token norms mid-grid."""
    norms = np.linalg.norm(tokens, axis=-1).reshape(len(tokens), *grid)
    shifts = []
    for axis, side in enumerate(grid):
        profile = norms.sum(axis=2 - axis)  # (N, side): mass along this axis
        phase = np.exp(2j * np.pi * np.arange(side) / side)
        centroid = np.angle(profile @ phase) * side / (2 * np.pi)
        shifts.append(np.round(side / 2 - centroid).astype(int) % side)
    return np.stack(shifts, axis=1)


def recentre(tokens: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Each (L, C) code of ``tokens`` rolled to its canonical, shift-free position."""
    return roll_tokens(tokens, grid, recentring_shifts(tokens, grid))
