"""Attacks on keyed codes (token_order, jigsaw, keyed): known answers, and realism on synthetic codes.

The synthetic codes are not a copy of the image: each 4×4 patch of a smooth 32×32 image (a body-like
ellipse that sits roughly in the middle, plus random blobs) goes through a fixed random linear map to
C = 4 channels, a bias, noise and tanh, on an 8×8 token grid. The key then mixes channels with a
random orthogonal matrix (and a scale) and permutes the tokens, as a center's key would.
"""

import numpy as np
import pytest
from scipy.stats import ortho_group

from privacysf.attacks.inversion import recover_order
from privacysf.attacks.jigsaw import jigsaw, mixing_invariant_similarity
from privacysf.attacks.keyed import linkage, nearest_codes, procrustes_align
from privacysf.attacks.shadow import align_channels
from privacysf.attacks.token_order import (
    order_accuracy,
    order_accuracy_up_to_symmetry,
    recover_order_by_regression,
)

GRID = (8, 8)
L = GRID[0] * GRID[1]


def _images(n: int, seed: int, size: int = 32) -> np.ndarray:
    """(n, 1, size, size) smooth images: a jittered central ellipse plus four random Gaussian blobs."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(np.float64)
    shift = rng.normal(0, 1.5, (n, 2, 1, 1))
    dy = (yy - size / 2 - shift[:, 0]) / (0.3 * size)
    dx = (xx - size / 2 - shift[:, 1]) / (0.22 * size)
    body = np.exp(-(dy**2 + dx**2))
    centre = rng.uniform(0, size, (n, 4, 2, 1, 1))
    width = rng.uniform(2, 5, (n, 4, 1, 1))
    amplitude = rng.uniform(-0.6, 0.6, (n, 4, 1, 1))
    blobs = amplitude * np.exp(-((yy - centre[:, :, 0]) ** 2 + (xx - centre[:, :, 1]) ** 2) / (2 * width**2))
    return (body + blobs.sum(axis=1))[:, None].astype(np.float32)


def _codes(images: np.ndarray, channels: int = 4, noise: float = 0.2, seed: int = 1) -> np.ndarray:
    """(n, L, C) tokens = tanh(patch @ W + b + noise), one token per 4×4 patch in raster order."""
    rng = np.random.default_rng(seed)
    weights, bias = rng.normal(0, 0.5, (16, channels)), rng.normal(0, 0.3, channels)
    n = len(images)
    patches = images[:, 0].reshape(n, GRID[0], 4, GRID[1], 4).transpose(0, 1, 3, 2, 4).reshape(n, L, 16)
    return np.tanh(patches @ weights + bias + rng.normal(0, noise, (n, L, channels))).astype(np.float32)


def _key(tokens: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Orthogonal mix with a scale, then a token permutation; returns keyed tokens and the true order."""
    mix = ortho_group.rvs(tokens.shape[-1], random_state=seed)
    perm = np.random.default_rng(seed).permutation(tokens.shape[1])
    return (tokens @ mix / 1.7)[:, perm].astype(np.float32), np.argsort(perm)


@pytest.fixture(scope="module")
def keyed_data():
    images = _images(200, seed=0)
    tokens, true_order = _key(_codes(images), seed=3)
    return images, tokens, true_order


# -- order accuracy -------------------------------------------------------------------------------


def test_order_accuracy_known_answers():
    true_order = np.random.default_rng(0).permutation(L)
    assert order_accuracy(true_order, true_order, GRID) == {
        "exact": 1.0,
        "within_one": 1.0,
        "median_error_cells": 0.0,
    }
    swapped = true_order.copy()  # two horizontally adjacent cells exchange their tokens
    swapped[[0, 1]] = swapped[[1, 0]]
    result = order_accuracy(swapped, true_order, GRID)
    assert result["exact"] == pytest.approx(1 - 2 / L) and result["within_one"] == 1.0
    far = true_order.copy()  # opposite corners exchange theirs: off by sqrt(7² + 7²) cells
    far[[0, L - 1]] = far[[L - 1, 0]]
    assert order_accuracy(far, true_order, GRID)["within_one"] == pytest.approx(1 - 2 / L)
    grid = (16, 16)
    big_true = np.random.default_rng(1).permutation(256)
    random = order_accuracy(np.random.default_rng(2).permutation(256), big_true, grid)
    assert random["exact"] < 0.03 and random["within_one"] < 0.1 and random["median_error_cells"] > 4


def test_order_accuracy_up_to_symmetry_finds_rotation_and_reflection():
    true_order = np.random.default_rng(0).permutation(L)
    layout = true_order.reshape(GRID)
    for turned, name in [
        (np.rot90(layout), "rot270"),
        (np.rot90(layout, 2), "rot180"),
        (layout.T, "transpose"),
        (layout[:, ::-1], "flip_cols"),
    ]:
        order = np.ascontiguousarray(turned).ravel()
        assert order_accuracy(order, true_order, GRID)["exact"] < 0.2
        best = order_accuracy_up_to_symmetry(order, true_order, GRID)
        assert best["exact"] == 1.0 and best["within_one"] == 1.0 and best["symmetry"] == name
    grid = (4, 6)  # not square: only the 4 shape-preserving symmetries
    rect = np.random.default_rng(1).permutation(24)
    best = order_accuracy_up_to_symmetry(rect.reshape(grid)[::-1].ravel(), rect, grid)
    assert best["exact"] == 1.0 and best["symmetry"] == "flip_rows"


# -- order recovery from leaked pairs -------------------------------------------------------------


def test_regression_recovery_beats_norm_recovery(keyed_data):
    images, tokens, true_order = keyed_data
    k = 30
    regression = order_accuracy(recover_order_by_regression(tokens[:k], images[:k], GRID), true_order, GRID)
    norm = order_accuracy(recover_order(tokens[:k], images[:k], GRID), true_order, GRID)
    assert regression["exact"] > 0.6 > 20 / L  # chance is 1 / L
    assert regression["exact"] > norm["exact"] + 0.3
    assert regression["within_one"] > norm["within_one"] + 0.3
    with_neighbours = recover_order_by_regression(tokens[:k], images[:k], GRID, neighbour_term=True)
    assert order_accuracy(with_neighbours, true_order, GRID)["within_one"] > 0.8
    full = recover_order_by_regression(tokens, images, GRID)
    assert order_accuracy(full, true_order, GRID)["exact"] > 0.95


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_regression_recovery_with_fewer_pairs_than_features(keyed_data, k):
    images, tokens, _ = keyed_data
    order = recover_order_by_regression(tokens[:k], images[:k], GRID)  # C + 2 = 6 features
    assert sorted(order.tolist()) == list(range(L))


# -- pair-free jigsaw -----------------------------------------------------------------------------


def test_similarity_is_invariant_to_the_channel_mix(keyed_data):
    _, tokens, _ = keyed_data
    mixed = tokens @ ortho_group.rvs(4, random_state=9)
    np.testing.assert_allclose(
        mixing_invariant_similarity(mixed), mixing_invariant_similarity(tokens), atol=1e-5
    )
    perm = np.random.default_rng(0).permutation(L)  # a permutation permutes rows and columns
    np.testing.assert_allclose(
        mixing_invariant_similarity(tokens[:, perm]),
        mixing_invariant_similarity(tokens)[np.ix_(perm, perm)],
        atol=1e-6,
    )


def test_jigsaw_reassembles_smooth_codes_and_not_noise(keyed_data):
    _, tokens, true_order = keyed_data
    result = jigsaw(tokens, GRID, true_order=true_order)
    assert result["chance"] == pytest.approx((4 * 64 - 2 * 8 - 2 * 8) / 64 / 63)
    assert result["neighbour_precision"] > 0.7 and result["neighbour_precision"] > 10 * result["chance"]
    assert result["layout_distance_corr"] > 0.6
    assert result["within_one"] > 0.5 and result["symmetry"] is not None
    blind = jigsaw(tokens, GRID)  # the truth only scores: the recovery is the same without it
    np.testing.assert_array_equal(blind["order"], result["order"])
    assert blind["neighbour_precision"] is None and sorted(blind["order"].tolist()) == list(range(L))
    noise = np.random.default_rng(5).normal(size=tokens.shape).astype(np.float32)
    at_chance = jigsaw(noise, GRID, true_order=true_order)
    assert at_chance["neighbour_precision"] < 0.2
    assert abs(at_chance["layout_distance_corr"]) < 0.2


# -- rotation alignment without pairs -------------------------------------------------------------


def test_procrustes_align_undoes_a_rotation_that_align_channels_cannot():
    shadow = _codes(_images(400, seed=5), channels=4, seed=7)
    subsample = shadow[:200]
    victim = (subsample @ ortho_group.rvs(4, random_state=11) / 2.0).astype(np.float32)
    aligned = procrustes_align(victim, shadow)
    assert aligned.dtype == np.float32 and aligned.shape == subsample.shape
    procrustes_error = float(np.abs(aligned - subsample).mean())
    channels_error = float(np.abs(align_channels(victim, shadow) - subsample).mean())
    spread = float(np.abs(subsample - subsample.mean(axis=(0, 1))).mean())
    assert procrustes_error < 0.1 * spread
    assert procrustes_error < channels_error / 3


def test_procrustes_align_handles_different_channel_counts():
    images = _images(120, seed=8)
    victim, shadow = _codes(images, channels=4, seed=1), _codes(images, channels=6, seed=2)
    aligned = procrustes_align(victim, shadow)
    assert aligned.shape == (120, L, 6) and aligned.dtype == np.float32 and np.isfinite(aligned).all()
    narrow = procrustes_align(shadow, victim)
    assert narrow.shape == (120, L, 4) and np.isfinite(narrow).all()


# -- linkage --------------------------------------------------------------------------------------


def test_nearest_codes_known_answer():
    pool = np.random.default_rng(0).normal(size=(30, L, 4))
    shuffle = np.random.default_rng(1).permutation(30)
    np.testing.assert_array_equal(nearest_codes(pool[shuffle] + 1e-3, pool), shuffle)


def test_linkage_links_subjects_and_ignores_the_key():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(2, L, 4))
    groups = np.repeat([0, 1], 20)
    codes = (centres[groups] + 0.3 * rng.normal(size=(40, L, 4))).astype(np.float32)
    query, pool = codes[::2], codes[1::2]
    plain = linkage(query, groups[::2], pool, groups[1::2])
    assert plain["top1"] == 1.0 and plain["chance"] == 0.5
    keyed_query, _ = _key(query, seed=4)  # the same key (mix and permutation) on both sides
    keyed_pool, _ = _key(pool, seed=4)
    assert linkage(keyed_query, groups[::2], keyed_pool, groups[1::2]) == plain
    np.testing.assert_array_equal(nearest_codes(keyed_query, keyed_pool), nearest_codes(query, pool))
    unrelated = linkage(query, rng.integers(0, 2, 20), pool, rng.integers(0, 2, 20))
    assert unrelated["top1"] < 0.9


def test_linkage_chance_counts_each_querys_group():
    pool = np.arange(4, dtype=np.float32).reshape(4, 1, 1) * 10  # codes 0, 10, 20, 30
    query = np.array([1.0, 29.0, 21.0], dtype=np.float32).reshape(3, 1, 1)  # nearest: 0, 3, 2
    result = linkage(query, np.array([0, 0, 1]), pool, np.array([0, 0, 0, 1]))
    assert result["top1"] == pytest.approx(1 / 3)  # only the first query's nearest shares its group
    assert result["chance"] == pytest.approx((0.75 + 0.75 + 0.25) / 3)


def test_linkage_never_matches_an_excluded_code_and_counts_chance_over_the_rest():
    pool = np.arange(4, dtype=np.float32).reshape(4, 1, 1) * 10  # codes 0, 10, 20, 30
    query = np.array([1.0, 29.0], dtype=np.float32).reshape(2, 1, 1)  # nearest: 0 and 3
    excluded = np.array([[True, False, False, False], [True, True, True, True]])
    assert list(nearest_codes(query[:1], pool, excluded[:1])) == [1]  # 0 is out of reach: next is 10
    result = linkage(query, np.array([0, 1]), pool, np.array([0, 0, 1, 1]), excluded)
    assert result == {"top1": 1.0, "chance": pytest.approx(1 / 3), "queries": 1}  # query 2 has none left
