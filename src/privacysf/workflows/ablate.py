"""``privacysf ablate``: does a server-side code augmentation help, on how much data, with which center?

For each training share and seed (:class:`~privacysf.config.studies.AblationConfig`) one center is
trained per equivariance weight and padding, then the server's mapper is retrained on that center's
codes with no augmentation, with each policy, and with the configured default set minus each member,
so every row differs from its reference in one switch; the raw U-Net trains on the same slices for
the gap. Each cell is written to ``ablation.json`` as soon as it is scored, so a stopped study keeps
what it has; ``ablation.md`` (:mod:`privacysf.workflows.ablation_table`) pairs every change within a
seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

from privacysf.center.codecs import token_grid
from privacysf.center.equivariance import measure
from privacysf.center.pipeline import Center, train_center
from privacysf.common.runs import write_json, write_text
from privacysf.common.torchutil import seed_everything
from privacysf.config import AUGMENTATIONS as SWITCHES
from privacysf.config import AugmentConfig, ExperimentConfig
from privacysf.data.prepare import PreparedData, prepare
from privacysf.errors import ConfigError
from privacysf.metrics.evaluation import dice_3d, score_test
from privacysf.metrics.segmentation import Summary
from privacysf.nets.unet import predict_labels, train_unet
from privacysf.workflows.ablation_table import ablation_markdown
from privacysf.workflows.inprocess import fit_server
from privacysf.workflows.session import open_run

PROBABILITY = 0.5


def variants(
    default: AugmentConfig, policies: Sequence[str] = SWITCHES, max_shifts: Sequence[int] | None = None
) -> dict[str, AugmentConfig]:
    """``none``, ``+policy`` for each policy (its ``+``-joined augmentations on together) and, when the
    configured default switches some on, ``default`` and ``default -name`` for each of them.

    Every row takes its reach from ``max_shifts`` (unset: the configured one); a row that shifts is
    repeated per reach, the first keeping the row's name, the others adding ", shifts up to K". A row
    whose augmentation equals an earlier row's is left out (with the recommended ``shift`` alone on,
    ``default -shift`` is ``none``), so no mapper is trained twice on the same center."""
    reaches = list(max_shifts or [default.max_shift])
    off = default.updated(**{name: 0.0 for name in SWITCHES})
    candidates = [("none", off)]
    candidates += [
        (f"+{policy}", off.updated(**dict.fromkeys(policy.split("+"), PROBABILITY))) for policy in policies
    ]
    if enabled := [name for name in SWITCHES if getattr(default, name) > 0]:
        candidates.append(("default", default))
        candidates += [(f"default -{name}", default.updated(**{name: 0.0})) for name in enabled]
    rows: dict[str, AugmentConfig] = {}
    for name, augment in candidates:
        for i, reach in enumerate(reaches if augment.shift > 0 else reaches[:1]):
            reached = augment.updated(max_shift=reach)
            if reached not in rows.values():
                rows[name + (f", shifts up to {reach}" if i else "")] = reached
    return rows


def _scores(test: Summary) -> dict:
    volume = dice_3d(test)
    return {"dice_3d": volume["mean"] if volume else None, "slice_dice": test["mean"]["dice"]["mean"]}


def _center_rows(
    cfg: ExperimentConfig, data: PreparedData, device, folder: Path
) -> tuple[dict[str, dict], list[dict]]:
    """One center trained with ``cfg``: the test scores of one mapper per augmentation variant, and
    its encoders' equivariance errors on the test slices under every transform the server can apply."""
    center, _ = train_center(cfg, data.train, data.val, data.info.num_classes, device, folder)
    served = center.serving()  # each variant scored as `privacysf segment` runs the center
    study, test = cfg.ablation, data.test
    errors = measure(
        served.image_encoder,
        served.mask_codec,
        test.images,
        test.masks,
        cfg.codec.downsample,
        longest_shift(cfg),
    )
    rows = {}
    for suffix, views in study.upload_views(cfg.codec):
        for policy, augment in variants(cfg.augment, study.policies, study.max_shifts).items():
            name = policy + suffix
            variant_dir = folder / "variants" / name.replace(" ", "_").replace(",", "")
            variant = cfg.updated(augment=augment, codec=cfg.codec.updated(upload_views=views))
            rows[name] = {
                **remap_scores(variant, replace(center, cfg=variant), served, data, variant_dir),
                "augment": augment.model_dump(),
                "upload_views": views,
            }
            print(f"    {name:22s} 3-D Dice {rows[name]['dice_3d']:.4f}", flush=True)
    return rows, [asdict(row) for row in errors]


def remap_scores(
    cfg: ExperimentConfig, center: Center, served: Center, data: PreparedData, folder: Path
) -> dict:
    """Train one server mapper with ``cfg`` on what ``center`` uploads (its config says how many views)
    and score it on the test slices as ``served`` segments them: the networks stay fixed, so rows
    differ in the mapper alone."""
    seed_everything(cfg.train.seed, cfg.train.threads)
    server, fit_result, upload = fit_server(cfg, center, data.train, data.val, folder)
    return {
        **_scores(score_test(served.segment(server, data.test.images), data)),
        "best_val_mse": -fit_result.best_score,
        "mapper_seconds": round(fit_result.seconds, 1),
        "train_bytes": upload["train_bytes"],
    }


def run_cell(cfg: ExperimentConfig, data: PreparedData, device, folder: Path) -> dict:
    """Every center and policy, and the raw U-Net, on one share and seed (``cfg.data``)."""
    cell: dict = {
        "fraction": cfg.data.train_fraction,
        "seed": cfg.data.seed,
        "train_slices": len(data.train),
        "centers": {},
        "equivariance": {},
    }
    for name, overrides in cfg.ablation.centers(cfg.codec):
        print(f"  center, {', '.join(overrides)}", flush=True)
        seed_everything(cfg.train.seed, cfg.train.threads)
        center_dir = folder / ("equivariance" + name.replace(", ", "-"))
        rows, errors = _center_rows(cfg.override(overrides), data, device, center_dir)
        cell["centers"][name], cell["equivariance"][name] = rows, errors
    if cfg.ablation.compare_unet:
        seed_everything(cfg.train.seed, cfg.train.threads)
        unet, _ = train_unet(cfg, data, device, folder / "baseline" / "unet.pt")
        cell["unet"] = _scores(score_test(predict_labels(unet, data.test.images, device), data))
        print(f"    raw U-Net              3-D Dice {cell['unet']['dice_3d']:.4f}", flush=True)
    return cell


def study_cells(cfg: ExperimentConfig) -> list[ExperimentConfig]:
    """One config per training share × seed of ``cfg.ablation``; an unset list keeps ``cfg.data``'s."""
    study = cfg.ablation
    shares = [[f"data.train_fraction={share}"] for share in study.fractions or ()] or [[]]
    seeds = [[f"data.seed={seed}", f"train.seed={seed}"] for seed in study.seeds or ()] or [[]]
    return [cfg.override(share + seed) for share in shares for seed in seeds]


def longest_shift(cfg: ExperimentConfig) -> int:
    """The longest whole-token shift any row of the study trains with."""
    return max(cfg.ablation.max_shifts or [cfg.augment.max_shift])


def check_reach(cfg: ExperimentConfig) -> None:
    """Refuse, before anything trains, a shift longer than half the token grid's shorter side: that
    already reaches every cyclic position, and a longer roll wraps round to a shorter one."""
    reach = longest_shift(cfg)
    side = min(token_grid(cfg.data.size, cfg.codec))
    if reach > side // 2:
        raise ConfigError(
            f"shifts up to {reach} tokens on a token grid {side} wide: half of it ({side // 2}) already "
            "reaches every cyclic position; lower ablation.max_shifts (or augment.max_shift)"
        )


def run_ablation(cfg: ExperimentConfig) -> tuple[Path, dict]:
    """Every training share × seed in turn; returns the run folder and ``ablation.json``'s content."""
    check_reach(cfg)
    cells = study_cells(cfg)
    session = open_run(cells[0], "ablation")  # config.json: the first cell's, the study section whole
    device, first, run_dir = session.device, session.data, session.run_dir
    summary: dict = {"dataset": first.info.name, "mode": cfg.codec.image_mode, "cells": []}
    for i, cell_cfg in enumerate(cells):
        share, seed = cell_cfg.data.train_fraction, cell_cfg.data.seed
        print(f"[{i + 1}/{len(cells)}] training share {share:g}, seed {seed}", flush=True)
        data = first if i == 0 else prepare(cell_cfg.data)
        folder = run_dir / "cells" / f"share{share:g}-seed{seed}"
        summary["cells"].append(run_cell(cell_cfg, data, device, folder))
        write_json(run_dir / "ablation.json", summary)
        write_text(run_dir / "ablation.md", ablation_markdown(summary))
    return run_dir, summary
