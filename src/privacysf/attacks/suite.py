"""``privacysf attack``: every attack against every setting, over seeds, the attack table and the curve.

A *setting* is an image-encoder mode (``autoencoder``, ``task``, ``private`` at each λ) combined with
a key setting (none, secret channel mixing, mixing + token permutation with the transformer mapper).
For each seed (one split and one training), the suite trains what a center and the server would (the
mask codec and raw U-Net are shared by all settings of a seed), measures Dice through the whole
pipeline, and runs every attack of :mod:`privacysf.attacks.setting` on what the server receives:
encoded-data analysis, linkage, lookups and ridge, inversion curves, the shadow codec, mask attacks,
attacks on the key's permutation, and membership inference on the mapper.

The benchmark is well posed on datasets split by subject (``brain-3subjects``, ``phantom``, a user
folder with three or more cases): the attacked queries come from subjects that no leaked pair and no
shadow dataset contains. A single-subject dataset is split by slab, where every query has a
near-duplicate among the leaked slices; its figures are labelled the attacker's best case.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from privacysf.attacks.inversion import DecoderRecipe
from privacysf.attacks.membership import membership_attacks
from privacysf.attacks.report import write_attack_report
from privacysf.attacks.setting import (
    Received,
    Scene,
    Shadow,
    encoded_analysis,
    image_attacks,
    key_attacks,
    linkage,
    mask_attacks,
    mode_settings,
    norm_panel,
    recentred,
    setting_name,
    strongest_linkage,
    well_posed,
)
from privacysf.center.codecs import (
    MaskCodec,
    encode_images,
    encode_masks,
    token_grid,
    train_mask_codec,
)
from privacysf.center.image_encoder import train_image_encoder
from privacysf.center.pipeline import Center, draw_key
from privacysf.common.figures import image_grid, pick_rows
from privacysf.common.runs import new_run_dir, write_json
from privacysf.common.torchutil import resolve_device, seed_everything
from privacysf.config import ExperimentConfig
from privacysf.data.prepare import PreparedData, describe, prepare
from privacysf.data.preprocess import SliceSet
from privacysf.errors import ConfigError
from privacysf.exchange import decode_codes
from privacysf.metrics.evaluation import score_test
from privacysf.nets.unet import predict_labels, train_unet
from privacysf.workflows.inprocess import fit_server

LEAKED_SUBJECTS = "leaked-subjects"
"""Public-data choice: the shadow attacker trains on the victim dataset's non-query subjects."""
DEFAULT_PUBLIC = {
    "icbm152-tissue": "colin27-brain",
    "icbm152-brain": "colin27-brain",
    "colin27-brain": "icbm152-brain",
    "itk-t1-brain": "colin27-brain",
    "brain-3subjects": LEAKED_SUBJECTS,
    "dsb-nuclei": "cells3d-nuclei",
    "cells3d-nuclei": "dsb-nuclei",
    "phantom": "phantom",
}
"""The shadow attacker's public data: another source of the same modality (phantom: a fresh draw;
brain-3subjects: the two brains that are not queried, so the queried subject stays unseen)."""

UNAUGMENTED = ["augment.shift=0"]
"""Every key setting's mapper trains without augmentation: a secret permutation rules the default
shift out, so with it on elsewhere the rows would differ in augmentation as well as in the key (the
membership attack reads the mapper), and the published figures were measured without it."""
KEY_OVERRIDES = {
    "none": ["key.enabled=false", "key.per_query_shift=false"],
    "mix": [
        "key.enabled=true",
        "key.mix_channels=true",
        "key.permute_tokens=false",
        "key.per_query_shift=false",
    ],
    "mix+perm": [
        "key.enabled=true",
        "key.mix_channels=true",
        "key.permute_tokens=true",
        "key.per_query_shift=false",
        "mapper.kind=transformer",
        "mapper.padding=zeros",
    ],
    "shift": ["key.enabled=false", "key.per_query_shift=true", "mapper.kind=poly", "mapper.padding=circular"],
}
PICTURE_ROWS = 5


def _slug(mode: str, weight: float | None, key: str) -> str:
    return f"{mode}{f'-{weight:g}' if weight is not None else ''}-key-{key.replace('+', '-')}"


def _public_data(cfg: ExperimentConfig, victim: PreparedData) -> PreparedData:
    name = cfg.attack.public_dataset or DEFAULT_PUBLIC.get(cfg.data.dataset, "")
    if name == LEAKED_SUBJECTS:
        if victim.split.get("kind") != "case":
            raise ConfigError(
                f"attack.public_dataset={LEAKED_SUBJECTS} needs a dataset split by subject (3+ cases); "
                f"{cfg.data.dataset!r} is split by slab"
            )
        empty = victim.val.subset(np.zeros(len(victim.val), bool))
        return PreparedData(replace(victim.info, name=LEAKED_SUBJECTS), victim.train, victim.val, empty)
    if not name:
        raise ConfigError(
            f"no default public dataset for {cfg.data.dataset!r}; set attack.public_dataset to a "
            f"built-in dataset of the same modality (privacysf data list) or to {LEAKED_SUBJECTS}"
        )
    if name == cfg.data.dataset and name != "phantom":
        raise ConfigError("attack.public_dataset must differ from the victim's dataset")
    seed = cfg.data.seed + 1 if name == cfg.data.dataset else cfg.data.seed
    public = prepare(cfg.data.updated(dataset=name, seed=seed, num_classes=None))
    if name == "phantom":  # a fresh draw: rename its subjects so none is mistaken for a victim's
        for part in public.splits().values():
            part.case_ids = [f"public-{c}" for c in part.case_ids]
    return public


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
        dataset=public.info.name,
        subjects=sorted(set(everything.case_ids)),
        image_decoder=parts["image_decoder"].eval(),
        image_tokens=encode_images(encoder, everything.images, device),
        mask_decoder=mask_codec.decoder if mask_codec else None,
        mask_tokens=encode_masks(mask_codec, everything.masks, device) if mask_codec else None,
    )


def received(center: Center, part: SliceSet) -> Received:
    """What the server holds of one split: its codes as decoded from the center's wire messages, made
    as uploads are (pairs, each rolled by a fresh shift of its own when the setting shifts codes)."""
    image_message, mask_message = center.pair_messages(part.images, part.masks)
    return Received(
        decode_codes(image_message).tokens, decode_codes(mask_message).tokens, list(part.case_ids)
    )


def attack_setting(
    cfg: ExperimentConfig,
    center: Center,
    server,
    data: PreparedData,
    shadow: Shadow,
    device: torch.device,
    pictures: Path,
) -> dict:
    """Every attack on one trained setting; returns its metrics and saves its pictures."""
    a = cfg.attack
    train, val, test = (received(center, part) for part in (data.train, data.val, data.test))
    pool = SliceSet.concatenate([data.train, data.val], cfg.data.size)
    pool_codes = Received(np.r_[train.images, val.images], np.r_[train.masks, val.masks], pool.case_ids)
    key = center.key
    true_order = key.inverse_permutation if key is not None and key.cfg.permute_tokens else None
    scene = Scene(
        pool,
        pool_codes,
        data.test,
        test,
        center.grid,
        data.info.num_classes,
        true_order,
    )
    width = a.decoder_width or cfg.codec.width
    recipe = DecoderRecipe(
        width, cfg.codec.downsample, a.attacker_steps, cfg.train.lr, cfg.codec.norm, seed=cfg.train.seed
    )
    results: dict = {
        "well_posed": well_posed(scene, shadow),
        "encoded": encoded_analysis(scene, a.candidates),
        "linkage": linkage(scene),
    }
    jigsaw_order = None
    if true_order is not None:
        results["key"], jigsaw_order = key_attacks(scene, a.leaked_pairs, cfg.train.seed)
    results["image"], image_panels = image_attacks(scene, a, recipe, shadow, device, jigsaw_order)
    results["mask"], mask_panels = mask_attacks(scene, a, recipe, shadow, device)
    if cfg.key.per_query_shift:  # the family is public: every attack again on recentred codes
        aware = recentred(scene)
        results["linkage"] = strongest_linkage(results["linkage"], linkage(aware))
        for part, attack in (("image", image_attacks), ("mask", mask_attacks)):
            entries, panels = attack(aware, a, recipe, shadow, device)
            results[part] |= {f"{name}, recentred": entry for name, entry in entries.items()}
            (image_panels if part == "image" else mask_panels).update(
                {f"{name}, recentred": panel for name, panel in panels.items()}
            )
    results["membership"] = membership_attacks(server, cfg, center.grid, center.scan, train, val, test)

    rows = pick_rows(data.test.masks, PICTURE_ROWS)
    image_grid(
        pictures,
        {
            "image (center only)": data.test.images[rows, 0],
            "received token norms": norm_panel(scene, rows),
            **{name: stack[rows] for name, stack in {**image_panels, **mask_panels}.items()},
        },
        data.info.display_rotations,
        cmaps={"received token norms": "viridis"},
    )
    return results


def run_seed(cfg: ExperimentConfig, run_dir: Path, device: torch.device, results: dict, save) -> None:
    """Every setting on one seed's split: its summary and a row per setting go into ``results``,
    saved after each, so a stopped run keeps what finished."""
    data = prepare(cfg.data)
    k_classes = data.info.num_classes
    seed_dir = run_dir / f"seed{cfg.train.seed}"
    write_json(seed_dir / "data.json", describe(data))
    public = _public_data(cfg, data)  # before any training: a wrong choice fails at once
    grid = token_grid(cfg.data.size, cfg.codec)
    seed_everything(cfg.train.seed, cfg.train.threads)
    unet, _ = train_unet(cfg, data, device, seed_dir / "baseline" / "unet.pt")
    unet_test = score_test(predict_labels(unet, data.test.images, device), data)
    unet_dice = unet_test["mean"]["dice"]["mean"]
    codec, _ = train_mask_codec(
        cfg, data.train, data.val, k_classes, device, seed_dir / "center" / "mask_codec.pt"
    )
    shadow = train_shadow(cfg, public, k_classes, device)
    summary = {
        "seed": cfg.train.seed,
        "split": data.split,
        "raw_unet": {"test": unet_test},
        "public": shadow.dataset,
    }
    results["seeds"].append(summary)
    rows = results["settings"]
    for mode, weight in mode_settings(cfg):
        mode_cfg = cfg.override(
            [f"codec.image_mode={mode}"] + ([f"codec.private_weight={weight}"] if weight is not None else [])
        )
        seed_everything(cfg.train.seed, cfg.train.threads)
        encoder, _, _ = train_image_encoder(
            mode_cfg,
            data.train,
            data.val,
            codec,
            device,
            seed_dir / _slug(mode, weight, "none") / "image_encoder.pt",
        )
        for key in cfg.attack.keys:
            started = time.perf_counter()
            setting_cfg = mode_cfg.override([*UNAUGMENTED, *KEY_OVERRIDES[key]])
            folder = seed_dir / _slug(mode, weight, key)
            center = Center(setting_cfg, codec, encoder, grid, device, draw_key(setting_cfg, folder))
            seed_everything(cfg.train.seed, cfg.train.threads)
            server, _, _ = fit_server(setting_cfg, center, data.train, data.val, folder)
            test = score_test(center.segment(server, data.test.images), data)
            dice = test["mean"]["dice"]["mean"]
            attacks = attack_setting(
                setting_cfg, center, server, data, shadow, device, folder / "attacks.png"
            )
            rows.append(
                {
                    "setting": setting_name(mode, weight, key),
                    "seed": cfg.train.seed,
                    "folder": f"{seed_dir.name}/{folder.name}",
                    "mode": mode,
                    "private_weight": weight,
                    "key": key,
                    "mapper": setting_cfg.mapper.kind,
                    "dice": dice,
                    "unet_dice": unet_dice,
                    "dice_ratio_vs_unet": dice / max(unet_dice, 1e-9),
                    "test": test,
                    "attacks": attacks,
                    "seconds": round(time.perf_counter() - started, 1),
                }
            )
            save()  # after every setting: a stopped run keeps its rows
            print(f"seed {cfg.train.seed} {rows[-1]['setting']}: Dice {dice:.3f}", flush=True)


def run_attack_suite(cfg: ExperimentConfig) -> tuple[Path, dict]:
    """Every seed × setting; writes ``results.json`` as it goes, then ``attacks.md`` and the curve."""
    device = resolve_device(cfg.train.device)
    run_dir = new_run_dir(cfg.output_dir, f"attack-{Path(cfg.data.dataset).name}")
    cfg.save(run_dir / "config.json")
    started = time.perf_counter()
    results: dict = {"dataset": cfg.data.dataset, "seeds": [], "settings": []}

    def save() -> None:
        write_json(run_dir / "results.json", results)

    for seed in cfg.attack.seeds:
        seed_cfg = cfg.override([f"data.seed={seed}", f"train.seed={seed}"])
        run_seed(seed_cfg, run_dir, device, results, save)
    results["seconds"] = round(time.perf_counter() - started, 1)
    save()
    write_attack_report(run_dir, cfg, results)
    return run_dir, results
