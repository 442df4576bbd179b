"""Every attack on one trained setting, each beside its code-free baselines.

A setting is one image-encoder mode under one key. The attacker holds what the server receives (every
uploaded code pair and every query code) plus what its scenario grants: k leaked (image, code) pairs
from the center's training and validation subjects, or public data of the same modality. The attacked
queries are the test split; on a dataset split by case they come from subjects that no leaked pair
and no shadow dataset contains (:func:`well_posed` records whether that holds).

Entries are tagged by ``kind``: ``attack`` (a real attack; the table shows the strongest), ``baseline``
(uses no code: the mean leaked image) or ``oracle`` (reads the truth: the best leaked image, the
ceiling of every lookup). The key's true permutation is used only to *score* order recoveries.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from privacysf.attacks import jigsaw, keyed, lookup, token_order
from privacysf.attacks.encoded import encoded_data_analysis, token_norm_maps
from privacysf.attacks.inversion import DecoderRecipe, decode_with, foreground_fraction, invert, recover_order
from privacysf.attacks.measures import image_similarity, reidentification_top1
from privacysf.attacks.shadow import align_channels
from privacysf.attacks.shifts import recentre
from privacysf.config import AttackConfig, ExperimentConfig
from privacysf.data.preprocess import SliceSet
from privacysf.metrics import per_slice_dice


def mode_settings(cfg: ExperimentConfig) -> list[tuple[str, float | None]]:
    """The image-encoder modes a run attacks, ``private`` once per λ."""
    a = cfg.attack
    return [(m, None) for m in a.modes if m != "private"] + (
        [("private", w) for w in a.private_weights] if "private" in a.modes else []
    )


def setting_name(mode: str, weight: float | None, key: str) -> str:
    return f"{mode}{f' λ={weight:g}' if weight is not None else ''} / key {key}"


def planned_rows(cfg: ExperimentConfig) -> list[tuple[str, int]]:
    """Every (setting, seed) row a run of ``cfg`` makes, in run order."""
    return [
        (setting_name(mode, weight, key), seed)
        for seed in cfg.attack.seeds
        for mode, weight in mode_settings(cfg)
        for key in cfg.attack.keys
    ]


@dataclass
class Received:
    """Codes of one split exactly as the server receives them (keyed, quantised), with their subjects."""

    images: np.ndarray
    masks: np.ndarray
    subjects: list[str]


@dataclass
class Shadow:
    """The shadow attacker's own codec, trained on public data, and its codes of that data."""

    dataset: str
    subjects: list[str]
    image_decoder: torch.nn.Module
    image_tokens: np.ndarray
    mask_decoder: torch.nn.Module | None
    mask_tokens: np.ndarray | None


@dataclass
class Scene:
    """One attacked setting: the leaked pool, the queries and what the server holds."""

    pool: SliceSet
    """Training + validation slices: where leaked pairs are drawn from."""
    pool_codes: Received
    queries: SliceSet
    query_codes: Received
    grid: tuple[int, int]
    num_classes: int
    true_order: np.ndarray | None
    """The key's inverse permutation (keyed[:, true_order] is in raster order); scoring only."""

    @property
    def data_range(self) -> float:
        return float(self.queries.images.max() - self.queries.images.min())


def k_label(k: int) -> str:
    """The name part of an attack from k leaked pairs: the same across seeds whose pools differ."""
    return f"k={k}" if k else "k=all"


def leaked_count(pool_size: int, k: int) -> int:
    """How many pairs k leaks from a pool (k = 0 or k > pool: all of it)."""
    return pool_size if k == 0 or k > pool_size else k


def leaked_indices(pool_size: int, k: int, seed: int) -> np.ndarray:
    """``leaked_count`` pairs drawn at random from the pool."""
    return np.sort(np.random.default_rng(seed).choice(pool_size, leaked_count(pool_size, k), replace=False))


def well_posed(scene: Scene, shadow: Shadow) -> dict:
    """Whether the attacked subjects appear in no leaked pair and no shadow data."""
    queried = set(scene.query_codes.subjects)
    overlap = sorted(queried & (set(scene.pool_codes.subjects) | set(shadow.subjects)))
    return {
        "query_subjects": sorted(queried),
        "leaked_subjects": sorted(set(scene.pool_codes.subjects)),
        "shadow_subjects": sorted(set(shadow.subjects)),
        "cross_subject": not overlap,
        "overlap": overlap,
    }


def _image_entry(recon: np.ndarray, scene: Scene, kind: str, candidates: int, **extra) -> dict:
    truth = scene.queries.images
    n = min(candidates, len(truth))
    return {
        **image_similarity(recon, truth, scene.data_range),
        "reid_top1": reidentification_top1(recon[:n], truth[:n]),
        "kind": kind,
        **extra,
    }


def _mask_entry(labels: np.ndarray, scene: Scene, kind: str, **extra) -> dict:
    dice = per_slice_dice(labels, scene.queries.masks, scene.num_classes)
    return {"dice": float(dice.mean()), "per_query": np.round(dice, 4).tolist(), "kind": kind, **extra}


def _in_order(
    leaked: np.ndarray, queries: np.ndarray, targets: np.ndarray, scene: Scene
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Leaked and query tokens put in the attacker's best raster order, and whether it was recovered.

    Without a permutation they already arrive in raster order; under one, the order is recovered
    from the leaked pairs by channel regression (``targets``: images or foreground fractions).
    """
    if scene.true_order is None:
        return leaked, queries, False
    order = token_order.recover_order_by_regression(leaked, targets, scene.grid)
    return leaked[:, order], queries[:, order], True


def key_attacks(scene: Scene, ks: tuple[int, ...], seed: int) -> tuple[dict, np.ndarray]:
    """Attacks on the permutation itself, scored against the true order: with pairs and pair-free.

    Returns the scores and the pair-free (jigsaw) order, which the shadow attack then uses.
    """
    assert scene.true_order is not None, "key attacks need a permuted setting"
    out: dict = {}
    for k in ks:
        pick = leaked_indices(len(scene.pool), k, seed)
        tokens, images = scene.pool_codes.images[pick], scene.pool.images[pick]
        for name, recover in (
            ("norm correlation", recover_order),
            ("channel regression", token_order.recover_order_by_regression),
        ):
            order = recover(tokens, images, scene.grid)
            out[f"{name} {k_label(k)}"] = {
                **token_order.order_accuracy(order, scene.true_order, scene.grid),
                "leaked_pairs": len(pick),
            }
    every_code = np.r_[scene.pool_codes.images, scene.query_codes.images]
    jig = jigsaw.jigsaw(every_code, scene.grid, true_order=scene.true_order)
    jig_order = np.asarray(jig.pop("order"))
    jig.pop("embedding")  # (L, 2) coordinates: a picture's worth, not a figure for results.json
    out["pair-free jigsaw"] = {**jig, "codes": len(every_code)}
    return out, jig_order


def image_attacks(
    scene: Scene,
    cfg: AttackConfig,
    recipe: DecoderRecipe,
    shadow: Shadow,
    device: torch.device,
    jigsaw_order: np.ndarray | None = None,
) -> tuple[dict, dict[str, np.ndarray]]:
    """Baselines, lookups, ridge, inversion curves and the shadow codec against the query images.

    ``jigsaw_order``: the pair-free order estimate of permuted codes, tried before the shadow decoder.
    """
    entries: dict = {}
    panels: dict[str, np.ndarray] = {}
    truth, count = scene.queries.images, len(scene.queries)
    largest = max(leaked_count(len(scene.pool), k) for k in cfg.leaked_pairs)
    for k in cfg.leaked_pairs:
        pick = leaked_indices(len(scene.pool), k, recipe.seed)
        n, tokens, images = len(pick), scene.pool_codes.images[pick], scene.pool.images[pick]
        tag, name = dict(leaked_pairs=n), k_label(k)
        entries[f"mean image {name}"] = _image_entry(
            lookup.mean_image(images, count), scene, "baseline", cfg.candidates, **tag
        )
        found = lookup.lookup(scene.query_codes.images, tokens, images)
        entries[f"nearest-code lookup {name}"] = _image_entry(found, scene, "attack", cfg.candidates, **tag)
        fitted = lookup.ridge(scene.query_codes.images, tokens, images)
        entries[f"ridge {name}"] = _image_entry(fitted, scene, "attack", cfg.candidates, **tag)
        best = lookup.oracle_best(truth, images, scene.data_range)
        entries[f"oracle best leaked {name}"] = _image_entry(best, scene, "oracle", cfg.candidates, **tag)
        leaked, queries, recovered = _in_order(tokens, scene.query_codes.images, images, scene)
        curve = n == largest
        steps = max(cfg.curve_steps) if curve else recipe.steps
        run = DecoderRecipe(**{**recipe.__dict__, "steps": steps})
        recons = invert(leaked, images, queries, scene.grid, 1, run, device, cfg.curve_steps if curve else ())
        scored = {s: image_similarity(r, truth, scene.data_range)["ssim"] for s, r in sorted(recons.items())}
        entries[f"inversion {name}"] = _image_entry(  # the full budget: choosing a step would read the truth
            recons[steps],
            scene,
            "attack",
            cfg.candidates,
            **tag,
            steps=steps,
            curve={str(s): round(v, 4) for s, v in scored.items()},
            order="recovered by channel regression" if recovered else "raster (no permutation)",
        )
        panels[f"inversion {name}"] = recons[steps][:, 0]
        if n == largest:
            panels["nearest-code lookup"] = found[:, 0]
    variants = {
        "shadow codec, channel match": align_channels(scene.query_codes.images, shadow.image_tokens),
        "shadow codec, Procrustes": keyed.procrustes_align(scene.query_codes.images, shadow.image_tokens),
    }
    if jigsaw_order is not None:
        variants["shadow codec, jigsaw order + Procrustes"] = keyed.procrustes_align(
            scene.query_codes.images[:, jigsaw_order], shadow.image_tokens
        )
    for name, aligned in variants.items():
        recon = decode_with(shadow.image_decoder, aligned, scene.grid, device)
        entries[name] = _image_entry(recon, scene, "attack", cfg.candidates, public=shadow.dataset)
    panels[name] = recon[:, 0]  # the last variant tried, picked without looking at the truth
    return entries, panels


def mask_attacks(
    scene: Scene, cfg: AttackConfig, recipe: DecoderRecipe, shadow: Shadow, device: torch.device
) -> tuple[dict, dict[str, np.ndarray]]:
    """The same against mask codes: majority label, lookup, ridge, inversion, shadow mask codec."""
    entries: dict = {}
    panels: dict[str, np.ndarray] = {}
    count, k_classes = len(scene.queries), scene.num_classes
    for k in cfg.leaked_pairs:
        pick = leaked_indices(len(scene.pool), k, recipe.seed)
        n, tokens, masks = len(pick), scene.pool_codes.masks[pick], scene.pool.masks[pick]
        name = k_label(k)
        hot = lookup.one_hot(masks, k_classes)
        entries[f"majority label {name}"] = _mask_entry(
            lookup.mean_image(hot, count).argmax(axis=1), scene, "baseline", leaked_pairs=n
        )
        entries[f"nearest-code lookup {name}"] = _mask_entry(
            lookup.lookup(scene.query_codes.masks, tokens, masks), scene, "attack", leaked_pairs=n
        )
        entries[f"ridge {name}"] = _mask_entry(
            lookup.ridge(scene.query_codes.masks, tokens, hot).argmax(axis=1), scene, "attack", leaked_pairs=n
        )
        leaked, queries, _ = _in_order(tokens, scene.query_codes.masks, foreground_fraction(masks), scene)
        labels = invert(leaked, masks, queries, scene.grid, k_classes, recipe, device)[recipe.steps]
        entries[f"inversion {name}"] = _mask_entry(labels, scene, "attack", leaked_pairs=n)
        panels[f"mask inversion {name}"] = labels
    if shadow.mask_decoder is not None and shadow.mask_tokens is not None:
        for name, align in (("channel match", align_channels), ("Procrustes", keyed.procrustes_align)):
            labels = decode_with(
                shadow.mask_decoder, align(scene.query_codes.masks, shadow.mask_tokens), scene.grid, device
            )
            entries[f"shadow codec, {name}"] = _mask_entry(labels, scene, "attack", public=shadow.dataset)
    return entries, panels


LINK_GUARD = 5
"""Linkage ignores codes of the query's own subject within this many slices: adjacent slices are
near-duplicates, and finding one says nothing about recognising the subject elsewhere in the body."""


def linkage(scene: Scene) -> dict:
    """Does a query's code find codes of the same subject among everything the server holds?

    The pool is every uploaded code plus the other queries, less the query's own neighbouring slices
    (``LINK_GUARD``); a hit is a nearest code of the query's own subject. Distances are what the key
    keeps, so this needs no pair and ignores the key. Subjects that differ in scanner or intensity
    make this easier: it measures whether codes group by subject, whatever the reason.
    """
    queries = scene.query_codes.images
    pool = np.r_[scene.pool_codes.images, queries]
    groups = np.array(scene.pool_codes.subjects + scene.query_codes.subjects)
    slices = np.r_[scene.pool.slice_index, scene.queries.slice_index]
    own = groups[len(scene.pool_codes.images) :]
    near = np.abs(scene.queries.slice_index[:, None] - slices[None, :]) <= LINK_GUARD
    result = keyed.linkage(queries, own, pool, groups, excluded=near & (own[:, None] == groups[None, :]))
    return {
        "top1": result["top1"],
        "chance": result["chance"],
        "pool": len(pool) - 1,
        "guard_slices": LINK_GUARD,
    }


def recentred(scene: Scene) -> Scene:
    """The scene with every received code moved to its shift-free position (:mod:`.shifts`): what an
    attacker who knows codes are shifted per query attacks instead."""

    def centre(codes: Received) -> Received:
        images, masks = recentre(codes.images, scene.grid), recentre(codes.masks, scene.grid)
        return Received(images, masks, codes.subjects)

    return dataclasses.replace(
        scene, pool_codes=centre(scene.pool_codes), query_codes=centre(scene.query_codes)
    )


def strongest_linkage(naive: dict, aware: dict) -> dict:
    """Linkage on the codes as received and on recentred ones: the better of the two, with both."""
    best = aware if aware["top1"] > naive["top1"] else naive
    return {**best, "as_received_top1": naive["top1"], "recentred_top1": aware["top1"]}


def encoded_analysis(scene: Scene, candidates: int) -> dict:
    """Norm-map correlation and code-norm re-identification (no model, no pair)."""
    return encoded_data_analysis(scene.query_codes.images, scene.queries.images, scene.grid, candidates)


def norm_panel(scene: Scene, rows: np.ndarray) -> np.ndarray:
    return token_norm_maps(scene.query_codes.images[rows], scene.grid)
