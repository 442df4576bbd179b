"""Attack measures and attack steps on cases with known answers, and the suite end to end (tiny)."""

import hashlib
import itertools
import json

import numpy as np
import pytest
import torch
from scipy.stats import mannwhitneyu

from privacysf.attacks import lookup
from privacysf.attacks.encoded import encoded_data_analysis, pool_to_grid
from privacysf.attacks.inversion import recover_order
from privacysf.attacks.measures import (
    auc_with_interval,
    image_similarity,
    mean_interval,
    per_image_ssim,
    reidentification_top1,
    ssim_matrix,
)
from privacysf.attacks.shadow import align_channels
from privacysf.center.image_encoder import _ReverseGradient
from privacysf.center.keys import CenterKey
from privacysf.cli import main

GRID = (8, 8)


def _images(n=12, size=32, seed=0):
    """Smooth random images with structure at the token-grid scale."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 1, (n, 1, *GRID)).astype(np.float32)
    return np.kron(coarse, np.ones((1, 1, size // GRID[0], size // GRID[1]), np.float32))


def _psnr(x: np.ndarray, y: np.ndarray, data_range: float) -> float:
    """Mean over images of each image's PSNR, written out."""
    mse = np.square(x - y).reshape(len(x), -1).mean(axis=1)
    return float(np.mean(10 * np.log10(data_range**2 / mse)))


def test_image_similarity_known_answers():
    images = 2 * _images()  # intensities in [0, 2]: the data range must be used, not assumed to be 1
    same = image_similarity(images, images, 2.0)
    assert same["ssim"] == pytest.approx(1.0, abs=1e-5) and same["psnr"] == 100.0
    assert same["per_query"] == [1.0] * len(images)
    mean = np.broadcast_to(images.mean(0), images.shape)
    noisy = images + np.random.default_rng(1).normal(0, 0.2, images.shape)
    for candidate in (mean, noisy):
        scores = image_similarity(candidate, images, 2.0)
        assert scores["psnr"] == pytest.approx(_psnr(candidate, images, 2.0), abs=1e-3)
        np.testing.assert_allclose(scores["per_query"], per_image_ssim(candidate, images, 2.0), atol=1e-4)
    assert image_similarity(noisy, images, 2.0)["psnr"] == pytest.approx(20.0, abs=0.5)  # 10·log10(4/0.04)
    assert image_similarity(mean, images, 2.0)["ssim"] < image_similarity(noisy, images, 2.0)["ssim"] < 1.0


def test_auc_known_answers():
    separated = auc_with_interval(np.array([3.0, 4, 5]), np.array([0.0, 1, 2]), resamples=200)
    assert separated["auc"] == 1.0 and separated["ci_low"] == 1.0
    assert auc_with_interval(np.array([0.0, 1]), np.array([2.0, 3]), resamples=10)["auc"] == 0.0
    # one tie between a member and a non-member counts one half: (1 + 1.5 + 2) / 6 pairs
    assert auc_with_interval(np.array([1.0, 2, 3]), np.array([0.0, 2]), resamples=10)["auc"] == 0.75
    rng = np.random.default_rng(0)
    members, nonmembers = rng.normal(size=400), rng.normal(size=400)
    chance = auc_with_interval(members, nonmembers, resamples=400)
    u = mannwhitneyu(members, nonmembers).statistic  # AUC is the Mann-Whitney U over the pairs
    assert chance["auc"] == pytest.approx(u / 400**2)
    # the 95% interval spans about ±1.96 standard errors of the AUC under no signal (Hanley & McNeil)
    standard_error = np.sqrt((400 + 400 + 1) / (12 * 400 * 400))
    width = chance["ci_high"] - chance["ci_low"]
    assert width == pytest.approx(2 * 1.96 * standard_error, rel=0.1)
    assert chance["ci_low"] < chance["auc"] < chance["ci_high"]


def test_reidentification_known_answers():
    images = _images()
    assert reidentification_top1(images, images) == 1.0
    assert reidentification_top1(-images, images) == 1.0  # sign-blind: anti-correlated maps still match
    assert reidentification_top1(images[::-1], images) < 0.2


def test_encoded_analysis_sees_a_code_that_copies_the_image_and_not_a_random_one():
    images = _images()
    pooled = pool_to_grid(images, GRID).reshape(len(images), -1, 1)
    leaky = encoded_data_analysis(np.repeat(pooled, 4, axis=2) / 2, images, GRID, 50)
    assert leaky["norm_image_correlation"] > 0.99 and leaky["reid_top1"] == 1.0
    noise = np.random.default_rng(0).normal(size=pooled.shape[:2] + (4,))
    blind = encoded_data_analysis(noise, images, GRID, 50)
    assert blind["norm_image_correlation"] < 0.5 and blind["reid_chance"] == pytest.approx(1 / 12)


def test_norm_recovery_places_tokens_only_when_a_channel_copies_the_image():
    """The weak recovery on its best case; tests/test_keyed_attacks.py measures it on realistic codes."""
    images = _images(n=100)
    pooled = pool_to_grid(images, GRID).reshape(100, -1)
    secret = np.random.default_rng(3).permutation(pooled.shape[1])
    tokens = np.stack([pooled, np.zeros_like(pooled)], axis=2)[:, secret]  # token j holds cell secret[j]
    order = recover_order(tokens, images, GRID)
    np.testing.assert_array_equal(tokens[:, order, 0], pooled)


def test_shadow_alignment_undoes_a_channel_permutation_sign_and_scale():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(1, 64, 3)) + np.linspace(-2, 2, 64)[None, :, None] * np.array([1, -3, 5])
    shadow = base + 0.05 * rng.normal(size=(40, 64, 3))
    victim = -2.0 * shadow[:, :, [2, 0, 1]] + 1.0
    aligned = align_channels(victim, shadow)
    np.testing.assert_allclose(aligned, shadow, atol=0.05)


def test_reverse_gradient_flips_and_scales_the_encoder_gradient():
    code = torch.ones(3, requires_grad=True)
    _ReverseGradient.apply(code, 0.5).sum().backward()
    np.testing.assert_allclose(code.grad.numpy(), -0.5)


def test_lookup_ridge_and_oracle_on_known_answers_and_blind_to_a_distance_preserving_key():
    """Ridge recovers images that are a linear function of the codes; lookup and ridge ignore the key."""
    rng = np.random.default_rng(0)
    images = _images(n=200)  # images a linear function of 64 cells: 150 pairs pin the map down
    pooled = pool_to_grid(images, GRID).reshape(200, -1, 1)
    tokens = np.concatenate([pooled, rng.normal(size=pooled.shape) * 0.1], axis=2).astype(np.float32)
    leaked, held = slice(0, 150), slice(150, 200)
    exact = lookup.ridge(tokens[held], tokens[leaked], images[leaked])
    assert image_similarity(exact, images[held], 1.0)["ssim"] > 0.95
    assert image_similarity(lookup.mean_image(images[leaked], 50), images[held], 1.0)["ssim"] < 0.5
    q, _ = np.linalg.qr(rng.normal(size=(2, 2)))
    perm = rng.permutation(tokens.shape[1])
    keyed_tokens = (tokens[:, perm] @ q).astype(np.float32) / 1.7
    np.testing.assert_allclose(
        lookup.ridge(keyed_tokens[held], keyed_tokens[leaked], images[leaked]), exact, atol=1e-3
    )
    np.testing.assert_array_equal(
        lookup.lookup(keyed_tokens[held], keyed_tokens[leaked], images[leaked]),
        lookup.lookup(tokens[held], tokens[leaked], images[leaked]),
    )
    np.testing.assert_array_equal(lookup.oracle_best(images[5:8], images[:40], 1.0), images[5:8])
    mean = lookup.mean_image(images[:50], 3)
    assert mean.shape == (3, *images.shape[1:]) and np.allclose(mean[0], images[:50].mean(0))


def test_ridge_leave_one_out_matches_refits_with_fewer_pairs_than_dimensions():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 200))
    y = x[:, :5] @ rng.normal(size=(5, 3)) + rng.normal(size=(30, 3))
    alphas = np.logspace(-2, 4, 7)
    brute = []
    for alpha in alphas:
        residuals = []
        for i in range(len(x)):
            keep = np.arange(len(x)) != i
            xk, yk = x[keep] - x[keep].mean(0), y[keep] - y[keep].mean(0)
            w = xk.T @ np.linalg.solve(xk @ xk.T + alpha * np.eye(len(xk)), yk)
            residuals.append(y[i] - y[keep].mean(0) - (x[i] - x[keep].mean(0)) @ w)
        brute.append(np.mean(np.square(residuals)))
    np.testing.assert_allclose(lookup.loo_errors(x, y, alphas), brute, rtol=1e-6)
    assert np.argmin(brute) > 0  # the smallest penalty is not the answer here


def test_ssim_matrix_equals_monai_pair_by_pair():
    rng = np.random.default_rng(0)
    truth = _images(n=3, size=32)
    candidates = np.clip(truth[[2, 0, 1, 1]] + rng.normal(0, 0.1, (4, 1, 32, 32)), 0, 1).astype(np.float32)
    matrix = ssim_matrix(truth, candidates, 1.0)
    for i in range(3):
        expected = per_image_ssim(candidates, np.repeat(truth[i : i + 1], 4, axis=0), 1.0)
        np.testing.assert_allclose(matrix[i], expected, atol=1e-5)
    assert list(matrix.argmax(axis=1)) == [1, 2, 0]  # each truth's own noisy copy scores best


def test_mean_interval_is_the_95_percent_interval_of_the_mean():
    """On many normal values the bootstrap interval is the textbook mean ± 1.96 standard errors."""
    values = np.random.default_rng(0).normal(3.0, 2.0, size=2000)
    result = mean_interval(values)
    assert result["mean"] == pytest.approx(values.mean()) and result["n"] == 2000
    standard_error = values.std() / np.sqrt(len(values))
    assert result["ci_low"] == pytest.approx(values.mean() - 1.96 * standard_error, abs=0.2 * standard_error)
    assert result["ci_high"] == pytest.approx(values.mean() + 1.96 * standard_error, abs=0.2 * standard_error)


def test_attack_suite_end_to_end_is_cross_subject_and_the_key_keeps_what_a_lookup_sees(tmp_path, monkeypatch):
    # Fixed keys and one thread, so the run is the same wherever the suite runs (another key or another
    # float summation order can round a keyed code across a near tie of the lookup).
    keys = (CenterKey(hashlib.sha256(f"test key {i}".encode()).digest()) for i in itertools.count())
    monkeypatch.setattr(CenterKey, "create", classmethod(lambda cls: next(keys)))
    code = main(
        [
            "attack",
            "--dataset",
            "phantom",
            "--size",
            "32",
            "--epochs",
            "2",
            "--quiet",
            "--out",
            str(tmp_path),
            "--modes",
            "task",
            "--keys",
            "none",
            "mix",
            "mix+perm",
            "--k",
            "5",
            "0",
            "--seeds",
            "0",
            "1",
            "--set",
            "data.phantom_cases=16",
            "--set",
            "attack.attacker_steps=10",
            "--set",
            "attack.curve_steps=[5,20]",
            "--set",
            "attack.bootstrap=20",
            "--set",
            "mapper.width=32",
            "--set",
            "train.threads=1",
        ]
    )
    assert code == 0
    (run,) = tmp_path.iterdir()
    results = json.loads((run / "results.json").read_text())
    names = ["task / key none", "task / key mix", "task / key mix+perm"]
    assert [(r["setting"], r["seed"]) for r in results["settings"]] == [(n, s) for s in (0, 1) for n in names]
    for row in results["settings"]:
        a = row["attacks"]
        assert a["well_posed"]["cross_subject"], a["well_posed"]  # queried subjects never leaked
        assert row["mapper"] == ("transformer" if "perm" in row["key"] else "unet")
        curve = a["image"]["inversion k=all"]["curve"]
        assert list(curve) == ["5", "20"] and a["image"]["inversion k=all"]["steps"] in (5, 20)
        kinds = {v["kind"] for v in a["image"].values()}
        assert kinds == {"attack", "baseline", "oracle"}
        assert all(
            len(v["per_query"]) == len(a["image"]["mean image k=5"]["per_query"]) for v in a["image"].values()
        )
        assert ("key" in a) == (row["key"] == "mix+perm")
        assert (run / row["folder"] / "attacks.png").is_file()
        if row["key"] != "none":
            assert (run / row["folder"] / "center" / "key.json").is_file()
    # Distances survive mixing and permutation. Ridge is continuous, so its mean SSIM barely moves. The
    # lookup picks one leaked image per query; int8 rounding of the rescaled keyed codes can flip a
    # near tie, and with 3 queries a seed one flip moves the mean by 0.03. So most picks, pooled over
    # seeds and keys, must be the unkeyed lookup's own (a key that scrambled distances would leave few).
    same_picks = []
    for seed in (0, 1):
        by_key = {r["key"]: r["attacks"]["image"] for r in results["settings"] if r["seed"] == seed}
        for key in ("mix", "mix+perm"):
            assert abs(by_key[key]["ridge k=all"]["ssim"] - by_key["none"]["ridge k=all"]["ssim"]) < 0.03, key
            keyed, plain = (
                np.array(by_key[k]["nearest-code lookup k=all"]["per_query"]) for k in (key, "none")
            )
            same_picks += list(np.isclose(keyed, plain, atol=1e-6))
        oracle, lookup_ssim = (
            by_key["none"]["oracle best leaked k=all"],
            by_key["none"]["nearest-code lookup k=all"],
        )
        assert oracle["ssim"] >= lookup_ssim["ssim"]  # the oracle is the ceiling of every lookup
    assert len(same_picks) == 12 and np.mean(same_picks) >= 0.75, same_picks
    report = (run / "attacks.md").read_text()
    assert "Cross-subject (well posed)" in report and "## Attacks on the key's permutation" in report
    for name in ("config.json", "results.json", "privacy_utility.png", "inversion_curve.png"):
        assert (run / name).is_file(), name
