"""``privacysf attack``: every attack against every setting, the attack table and the curve.

A *setting* is an image-encoder mode (``autoencoder``, ``task``, ``private`` at each λ) combined with
a key setting (none, secret channel mixing, mixing + token permutation with the transformer mapper).
For each, the suite trains what a center and the server would (the mask codec is shared by all
settings of a run, since it does not depend on the image mode), measures Dice through the whole
pipeline, and runs every attack on what the server receives:

- encoded-data analysis (token-norm map vs the pooled image; re-identification among N images);
- image inversion from k leaked pairs and the shadow-codec attack (SSIM / PSNR vs the mean image);
- mask inversion from k leaked pairs and, where public masks of the same classes exist, the shadow
  mask codec (Dice vs the per-pixel majority label);
- membership inference on the mapper (loss threshold and shadow model, ROC AUC with a 95% interval).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from privacysf.attacks.encoded import encoded_data_analysis, token_norm_maps
from privacysf.attacks.inversion import DecoderRecipe, decode_with, invert
from privacysf.attacks.measures import auc_with_interval, image_similarity, reidentification_top1
from privacysf.attacks.membership import pair_features, shadow_classifier, shadow_scores
from privacysf.attacks.report import write_attack_report
from privacysf.attacks.shadow import align_channels
from privacysf.baseline.unet import predict_labels, train_unet
from privacysf.center.codecs import (
    MaskCodec,
    encode_images,
    encode_masks,
    token_grid,
    train_image_encoder,
    train_mask_codec,
)
from privacysf.center.keys import CenterKey
from privacysf.center.pipeline import KEY, Center, fit_server, keyed_transform
from privacysf.config import ExperimentConfig
from privacysf.data.prepare import PreparedData, prepare
from privacysf.data.preprocess import SliceSet
from privacysf.errors import ConfigError
from privacysf.evaluation import score_test
from privacysf.exchange import CodeBatch, decode_codes, encode_codes
from privacysf.exchange.wire import KEYED_SCAN
from privacysf.figures import image_grid, pick_rows
from privacysf.metrics import mean_dice
from privacysf.runs import write_json
from privacysf.server import MappingServer
from privacysf.session import open_run
from privacysf.torchutil import seed_everything

DEFAULT_PUBLIC = {
    "icbm152-tissue": "colin27-brain",
    "icbm152-brain": "colin27-brain",
    "colin27-brain": "icbm152-brain",
    "itk-t1-brain": "colin27-brain",
    "dsb-nuclei": "cells3d-nuclei",
    "cells3d-nuclei": "dsb-nuclei",
    "phantom": "phantom",
}
"""The shadow attacker's public data: another source of the same modality (phantom: a fresh draw)."""

KEY_OVERRIDES = {
    "none": ["key.enabled=false"],
    "mix": ["key.enabled=true", "key.mix_channels=true", "key.permute_tokens=false"],
    "mix+perm": [
        "key.enabled=true",
        "key.mix_channels=true",
        "key.permute_tokens=true",
        "mapper.kind=transformer",
    ],
}
PICTURE_ROWS = 5


@dataclass
class Shadow:
    """The shadow attacker's own codec, trained on public data."""

    dataset: str
    image_encoder: torch.nn.Module
    image_decoder: torch.nn.Module
    image_tokens: np.ndarray
    mask_codec: MaskCodec | None
    mask_tokens: np.ndarray | None


@dataclass
class Received:
    """Codes of one split exactly as the server receives them (keyed, quantised)."""

    images: np.ndarray
    masks: np.ndarray

    @classmethod
    def of(cls, center: Center, part: SliceSet) -> Received:
        return cls(
            decode_codes(center.image_message(part.images)).tokens,
            decode_codes(center.mask_message(part.masks)).tokens,
        )


def mode_settings(cfg: ExperimentConfig) -> list[tuple[str, float | None]]:
    a = cfg.attack
    return [(m, None) for m in a.modes if m != "private"] + (
        [("private", w) for w in a.private_weights] if "private" in a.modes else []
    )


def setting_name(mode: str, weight: float | None, key: str) -> str:
    return f"{mode}{f' λ={weight:g}' if weight is not None else ''} / key {key}"


def _slug(mode: str, weight: float | None, key: str) -> str:
    return f"{mode}{f'-{weight:g}' if weight is not None else ''}-key-{key.replace('+', '-')}"


def _public_data(cfg: ExperimentConfig) -> PreparedData:
    name = cfg.attack.public_dataset or DEFAULT_PUBLIC.get(cfg.data.dataset, "")
    if not name:
        raise ConfigError(
            f"no default public dataset for {cfg.data.dataset!r}; set attack.public_dataset to a "
            "built-in dataset of the same modality (privacysf data list)"
        )
    if name == cfg.data.dataset and name != "phantom":
        raise ConfigError("attack.public_dataset must differ from the victim's dataset")
    seed = cfg.data.seed + 1 if name == cfg.data.dataset else cfg.data.seed
    return prepare(replace(cfg.data, dataset=name, seed=seed, num_classes=None))


def train_shadow(cfg: ExperimentConfig, public: PreparedData, num_classes: int, device) -> Shadow:
    """The attacker's autoencoder (and mask codec when the public masks have the same classes)."""
    shadow_cfg = cfg.override(["codec.image_mode=autoencoder"])
    mask_codec = None
    if public.info.num_classes == num_classes:
        mask_codec, _ = train_mask_codec(shadow_cfg, public.train, public.val, num_classes, device, None)
    stand_in = mask_codec or MaskCodec(public.info.num_classes, cfg.codec)  # unused by autoencoder mode
    encoder, _, parts = train_image_encoder(shadow_cfg, public.train, public.val, stand_in, device, None)
    everything = SliceSet.concatenate([public.train, public.val, public.test], cfg.data.size)
    return Shadow(
        public.info.name,
        encoder,
        parts["image_decoder"].eval(),
        encode_images(encoder, everything.images, device),
        mask_codec,
        encode_masks(mask_codec, everything.masks, device) if mask_codec else None,
    )


def _leaked(pool_size: int, k: int, seed: int) -> np.ndarray:
    k = pool_size if k == 0 or k > pool_size else k
    return np.sort(np.random.default_rng(seed).choice(pool_size, k, replace=False))


def _majority_labels(masks: np.ndarray, num_classes: int) -> np.ndarray:
    counts = np.stack([(masks == c).sum(axis=0) for c in range(num_classes)])
    return counts.argmax(axis=0)


def membership(
    server: MappingServer, cfg: ExperimentConfig, train: Received, val: Received, test: Received, scan: str
) -> dict:
    """Loss-threshold and shadow-model attacks on balanced members (train) vs non-members (test)."""
    rng = np.random.default_rng(cfg.train.seed)
    n = min(len(train.images), len(test.images))
    members = rng.choice(len(train.images), n, replace=False)
    target_in = pair_features(server, train.images[members], train.masks[members])
    target_out = pair_features(server, test.images, test.masks)
    results = {"loss_threshold": auc_with_interval(-target_in[:, 0], -target_out[:, 0], cfg.attack.bootstrap)}
    half = len(val.images) // 2
    if half < 2:
        results["shadow_model"] = {
            "skipped": f"only {len(val.images)} validation pairs to build a shadow from"
        }
        return results
    order = rng.permutation(len(val.images))
    inside, outside = order[:half], order[half:]

    def message(tokens: np.ndarray, kind: str) -> bytes:
        return encode_codes(
            CodeBatch(tokens, token_grid(cfg.data.size, cfg.codec), kind, scan=scan), "float32"
        )

    shadow = MappingServer(cfg.mapper, cfg.augment, replace(cfg.train, progress=False))
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


def attack_setting(
    cfg: ExperimentConfig,
    center: Center,
    server: MappingServer,
    data: PreparedData,
    shadow: Shadow,
    device: torch.device,
    pictures: Path,
) -> dict:
    """Every attack on one trained setting; returns its metrics and saves its pictures."""
    a, grid, k_classes = cfg.attack, center.grid, data.info.num_classes
    keyed_order = center.scan == KEYED_SCAN
    train, val, test = (Received.of(center, part) for part in (data.train, data.val, data.test))
    pool = SliceSet.concatenate([data.train, data.val], cfg.data.size)
    pool_codes = Received(np.r_[train.images, val.images], np.r_[train.masks, val.masks])
    recipe = DecoderRecipe(cfg.codec.width, cfg.codec.downsample, a.attacker_steps, cfg.train.lr)
    truth = data.test.images
    data_range = float(truth.max() - truth.min())

    results: dict = {"encoded": encoded_data_analysis(test.images, truth, grid, a.candidates)}
    image_attacks, mask_attacks, panels = {}, {}, {}
    for k in a.leaked_pairs:
        pick = _leaked(len(pool), k, cfg.train.seed)
        label = f"k={len(pick)}"
        recon = invert(
            pool_codes.images[pick], pool.images[pick], test.images, grid, 1, keyed_order, recipe, device
        )
        mean_image = np.repeat(pool.images[pick].mean(axis=0, keepdims=True), len(truth), axis=0)
        image_attacks[f"inversion {label}"] = {
            **image_similarity(recon, truth, data_range),
            "baseline_mean_image": image_similarity(mean_image, truth, data_range),
            "reid_top1": reidentification_top1(recon[: a.candidates], truth[: a.candidates]),
            "leaked_pairs": len(pick),
        }
        panels[f"inversion {label}"] = recon[:, 0]
        labels = invert(
            pool_codes.masks[pick], pool.masks[pick], test.masks, grid, k_classes, keyed_order, recipe, device
        )
        mask_attacks[f"inversion {label}"] = {
            "dice": mean_dice(labels, data.test.masks, k_classes),
            "baseline_majority_dice": mean_dice(
                np.repeat(_majority_labels(pool.masks[pick], k_classes)[None], len(truth), axis=0),
                data.test.masks,
                k_classes,
            ),
            "leaked_pairs": len(pick),
        }
        panels[f"mask inversion {label}"] = labels
    aligned = align_channels(test.images, shadow.image_tokens)
    recon = decode_with(shadow.image_decoder, aligned, grid, device)
    image_attacks["shadow codec"] = {**image_similarity(recon, truth, data_range), "public": shadow.dataset}
    panels["shadow codec"] = recon[:, 0]
    if shadow.mask_codec is not None and shadow.mask_tokens is not None:
        labels = decode_with(
            shadow.mask_codec.decoder, align_channels(test.masks, shadow.mask_tokens), grid, device
        )
        mask_attacks["shadow codec"] = {
            "dice": mean_dice(labels, data.test.masks, k_classes),
            "public": shadow.dataset,
        }
    else:
        mask_attacks["shadow codec"] = {
            "skipped": f"{shadow.dataset} has no masks with these {k_classes} classes"
        }
    results["image"], results["mask"] = image_attacks, mask_attacks
    results["membership"] = membership(server, cfg, train, val, test, center.scan)

    rows = pick_rows(data.test.masks, PICTURE_ROWS)
    image_grid(
        pictures,
        {
            "image (center only)": truth[rows, 0],
            "received token norms": token_norm_maps(test.images[rows], grid),
            **{name: stack[rows] for name, stack in panels.items()},
        },
        data.info.display_rotations,
        cmaps={"received token norms": "viridis"},
    )
    return results


def strongest_image_attack(results: dict) -> tuple[str, float]:
    name = max(results["image"], key=lambda n: results["image"][n]["ssim"])
    return name, results["image"][name]["ssim"]


def run_attack_suite(cfg: ExperimentConfig) -> tuple[Path, dict]:
    session = open_run(cfg, "attack")
    device, data, run_dir = session.device, session.data, session.run_dir
    k_classes = data.info.num_classes
    grid = token_grid(cfg.data.size, cfg.codec)
    started = time.perf_counter()

    unet, _ = train_unet(cfg, data, device, run_dir / "baseline" / "unet.pt")
    unet_test = score_test(predict_labels(unet, data.test.images, device), data)
    unet_dice = unet_test["mean"]["dice"]["mean"]
    codec, _ = train_mask_codec(
        cfg, data.train, data.val, k_classes, device, run_dir / "center" / "mask_codec.pt"
    )
    public = _public_data(cfg)
    shadow = train_shadow(cfg, public, k_classes, device)

    rows: list[dict] = []
    results = {
        "dataset": data.info.name,
        "split": data.split,
        "raw_unet": {"test": unet_test},
        "public_dataset": shadow.dataset,
        "settings": rows,
    }
    for mode, weight in mode_settings(cfg):
        mode_cfg = cfg.override(
            [f"codec.image_mode={mode}"] + ([f"codec.private_weight={weight}"] if weight else [])
        )
        seed_everything(cfg.train.seed, cfg.train.threads)
        encoder, _, _ = train_image_encoder(
            mode_cfg,
            data.train,
            data.val,
            codec,
            device,
            run_dir / _slug(mode, weight, "none") / "image_encoder.pt",
        )
        for key in cfg.attack.keys:
            setting_started = time.perf_counter()
            setting_cfg = mode_cfg.override(KEY_OVERRIDES[key])
            folder = run_dir / _slug(mode, weight, key)
            transform = None
            if setting_cfg.key.enabled:
                secret = CenterKey.create()
                secret.save(folder / KEY)
                transform = keyed_transform(setting_cfg, secret)
            center = Center(setting_cfg, codec, encoder, grid, device, transform)
            seed_everything(cfg.train.seed, cfg.train.threads)
            server, _, _ = fit_server(setting_cfg, center, data.train, data.val, folder)
            test = score_test(center.segment(server, data.test.images), data)
            dice = test["mean"]["dice"]["mean"]
            attacks = attack_setting(
                setting_cfg, center, server, data, shadow, device, folder / "attacks.png"
            )
            row = {
                "setting": setting_name(mode, weight, key),
                "folder": folder.name,
                "mode": mode,
                "private_weight": weight,
                "key": key,
                "mapper": setting_cfg.mapper.kind,
                "dice": dice,
                "dice_ratio_vs_unet": dice / max(unet_dice, 1e-9),
                "test": test,
                "attacks": attacks,
                "seconds": round(time.perf_counter() - setting_started, 1),
            }
            row["strongest_image_attack"], row["strongest_image_ssim"] = strongest_image_attack(attacks)
            rows.append(row)
            write_json(run_dir / "results.json", results)  # after every setting: a stopped run keeps its rows
            ssim = row["strongest_image_ssim"]
            print(f"{row['setting']}: Dice {dice:.3f}, strongest image attack SSIM {ssim:.3f}", flush=True)
    results["seconds"] = round(time.perf_counter() - started, 1)
    write_json(run_dir / "results.json", results)
    write_attack_report(run_dir, cfg, results)
    return run_dir, results
