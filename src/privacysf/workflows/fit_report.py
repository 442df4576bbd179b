"""The run report (Markdown with PNGs): metrics table, overlays, code pictures, curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from privacysf.center.pipeline import Center
from privacysf.common.figures import image_grid, pick_rows
from privacysf.common.markdown import Cell, Markdown, plus_minus
from privacysf.config import ExperimentConfig
from privacysf.data.prepare import PreparedData
from privacysf.exchange import decode_codes
from privacysf.metrics.evaluation import dice_3d

CODE_COLUMNS = 5


def save_code_pictures(path: Path, center: Center, data: PreparedData) -> None:
    """What the server receives, laid out on the token grid in raster order next to the image.

    These are the codes as decoded from the wire messages, so with a key they are the keyed codes.
    """
    rows = pick_rows(data.test.masks, CODE_COLUMNS)
    h, w = center.grid
    image_codes = decode_codes(center.image_message(data.test.images[rows])).tokens
    mask_codes = decode_codes(center.mask_message(data.test.masks[rows])).tokens
    image_grid_codes = image_codes.reshape(len(rows), h, w, -1)
    mask_grid_codes = mask_codes.reshape(len(rows), h, w, -1)
    codes = {
        "image code: token norm": np.linalg.norm(image_grid_codes, axis=-1),
        "image code: channel 0": image_grid_codes[..., 0],
        "image code: last channel": image_grid_codes[..., -1],
        "mask code: token norm": np.linalg.norm(mask_grid_codes, axis=-1),
    }
    image_grid(
        path,
        {
            "image (center only)": data.test.images[rows, 0],
            **codes,
            "mask (center only)": data.test.masks[rows],
        },
        data.info.display_rotations,
        cmaps={name: "viridis" for name in codes},
    )


def _mean_std(figures: dict | None, metric: str, digits: int) -> str | None:
    """``mean ± std`` of one metric in a summary section, or None (a dash) where the section is missing."""
    if not figures or metric not in figures:
        return None
    return plus_minus(figures[metric]["mean"], figures[metric]["std"], digits)


def _scores(name: str, test: dict) -> list[str | None]:
    m = test["mean"]
    volume = test.get("per_case_3d", {}).get("foreground_only", {}).get("mean")
    return [
        name,
        _mean_std(m, "dice", 3),
        _mean_std(test.get("foreground_only", {}).get("mean"), "dice", 3),
        f"{m['iou']['mean']:.3f}",
        _mean_std(m, "hd95", 2),
        _mean_std(m, "assd", 2),
        _mean_std(volume, "dice", 3),
        _mean_std(volume, "hd95", 2),
    ]


def scores_section(metrics: dict) -> Markdown:
    """The test table: slice figures (empty-mask rule and foreground only) beside 3-D per-case ones,
    for Privacy-SF and the raw U-Net, and the classes the test split lacks."""
    test = metrics["privacysf"]["test"]
    unit = test.get("distance_unit", "mm")
    rows = [_scores("Privacy-SF", test)]
    if "raw_unet" in metrics:
        rows.append(_scores("raw U-Net (sees pixels)", metrics["raw_unet"]["test"]))
    header = [
        "method",
        "slice Dice",
        "slice Dice, foreground only",
        "slice IoU",
        f"slice HD95 ({unit})",
        f"slice ASSD ({unit})",
        "3-D Dice per case",
        f"3-D HD95 per case ({unit})",
    ]
    section = (
        Markdown()
        .table(header, rows)
        .paragraph(
            f"Slice figures are mean ± std over {test['n_images']} test slices, each slice's mean over "
            'foreground classes; "slice Dice" scores a class that is neither true nor predicted on a '
            'slice as 1, "foreground only" averages only the classes each slice\'s truth holds. 3-D '
            "figures stack each test case's slices into one volume and average the classes each case "
            f"holds, then mean ± std over {test.get('per_case_3d', {}).get('n_cases', '–')} case(s) "
            "(docs/metrics.md)."
        )
    )
    absent = test.get("absent_classes")
    if absent:
        section.banner(
            f"Absent from the test split: {', '.join(absent)}. No test slice holds these classes, so "
            "they are left out of the foreground-only and 3-D figures; their slice-Dice share only "
            "measures false alarms."
        )
    return section


def ceiling_section(metrics: dict) -> Markdown:
    """The mask-codec ceiling per class and wire dtype, absent classes flagged, and the empty-mask guard."""
    p = metrics["privacysf"]
    by_dtype = p.get("mask_codec_ceiling_scores_by_wire_dtype")
    if not by_dtype:  # a run from before per-class ceilings were recorded
        return Markdown()
    wire = p["wire_dtype"]
    classes = by_dtype[wire]["per_class"]
    rows: list[list[Cell]] = [
        [
            f"{name} (absent from test)" if scores.get("absent") else name,
            *(by_dtype[dtype]["per_class"][name]["dice"]["mean"] for dtype in by_dtype),
            by_dtype[wire]["foreground_only"]["per_class"][name].get("dice", {}).get("mean"),
        ]
        for name, scores in classes.items()
    ]
    section = (
        Markdown()
        .heading("Mask-codec ceiling per class")
        .table(
            ["class", *(f"slice Dice, {dtype}" for dtype in by_dtype), f"foreground only, {wire}"],
            rows,
            ["", *(".3f" for _ in by_dtype), ".3f"],
        )
        .paragraph(
            "True test masks encoded by the center, sent over the wire in each dtype and decoded: the "
            "best Privacy-SF can do per class. A class absent from the test split is only scored on "
            "false alarms (a dash: no test slice holds it)."
        )
    )
    guard = p.get("mask_codec_empty_guard")
    if guard:
        section.paragraph(
            f"Empty-mask guard: the background logit was raised on {guard['pixels_raised']} pixel(s) "
            f"(largest raise {guard['largest_raise']:.3g}) so that an empty mask's own code decodes "
            f"empty in {p['wire_dtype']} and every finer wire dtype; validation ceiling "
            f"{guard['val_ceiling_before']:.3f} before, {guard['val_ceiling_after']:.3f} after. "
            "A mapped code for an empty slice is not covered."
        )
    return section


def ratio_text(ratio: float | None) -> str:
    """A Dice ratio for people: three decimals, or why there is none (the raw U-Net scored 0)."""
    return "undefined (the raw U-Net's Dice is 0)" if ratio is None else f"{ratio:.3f}"


def _facts(metrics: dict) -> list[str]:
    """The figures beside the table: codec ceiling, per-case Dice, ratio, payload, training time."""
    p = metrics["privacysf"]
    facts = [f"Mask-codec ceiling (round-trip Dice of true test masks): {p['mask_codec_ceiling_dice']:.3f}"]
    ceiling_3d = dice_3d(p.get("mask_codec_ceiling_scores_by_wire_dtype", {}).get(p["wire_dtype"]))
    if ceiling_3d:  # runs from before the ceiling was scored per case in 3-D lack it
        facts.append(f"Mask-codec ceiling, 3-D per-case Dice: {ceiling_3d['mean']:.3f}")
    cases = p["test"]["over_cases"]
    if cases["n_cases"] > 1:
        facts.append(
            f"Privacy-SF slice Dice over {cases['n_cases']} test cases (each case's slices averaged "
            "first): " + plus_minus(cases["dice"]["mean"], cases["dice"]["std"], 3)
        )
    if "raw_unet" in metrics:
        facts.append(f"Privacy-SF / raw U-Net mean Dice: {ratio_text(metrics.get('dice_ratio_vs_unet'))}")
    pay = p["payload_bytes_per_query"]
    seconds = ", ".join(f"{stage.replace('_', ' ')} {s} s" for stage, s in p["training_seconds"].items())
    if encrypted := p.get("encrypted_queries"):
        facts.append(encrypted_text(encrypted))
    if dp := p.get("mapper_dp"):
        facts.append(
            f"Server mapper trained with DP-SGD: (ε = {dp['epsilon']:.2f}, δ = {dp['delta']:g}) over "
            f"{dp['steps']} steps (noise multiplier {dp['noise_multiplier']}, clip {dp['max_grad_norm']}, "
            f"sample rate {dp['sample_rate']:.3g}); it covers the training pairs, not the validation "
            "pairs that chose the epoch kept"
        )
    return [
        *facts,
        f"Payload per unencrypted query, the median of {pay['queries']} test slices: {pay['up']} B up + "
        f"{pay['down']} B down = {pay['total']} B, at most {pay['total_max']} B; the raw image is "
        f"{p['raw_image_bytes']} B ({p['raw_image_dtype']})",
        f"Training seconds: {seconds}",
    ]


def encrypted_text(encrypted: dict) -> str:
    """One line on encrypted queries: Dice beside plaintext, time and bytes per query, key size."""
    pay = encrypted["bytes_per_query"]
    return (
        f"Encrypted queries (CKKS, ring degree {encrypted['ckks']['degree']}): test Dice "
        f"{encrypted['test_dice']:.3f} against {encrypted['plaintext_test_dice']:.3f} for the same mapper "
        f"on plain codes ({encrypted['labels_differing_from_plaintext']:.2%} of pixels labelled "
        f"differently); {encrypted['seconds_per_query']:.2f} s per query over {encrypted['queries']}; "
        f"{pay['up']:,} B up + {pay['down']:,} B down; public evaluation keys sent once: "
        f"{encrypted['evaluation_key_bytes'] / 1e6:.1f} MB"
    )


def _training_rows(metrics: dict) -> list[list[Cell]]:
    """Each network's epochs as trained (early stopping included), read from the run's metrics."""
    p = metrics["privacysf"]
    networks = {
        stage.replace("_", " "): (p["training"][stage], p["training_cost"][stage]) for stage in p["training"]
    }
    if "raw_unet" in metrics:
        networks["raw U-Net"] = (metrics["raw_unet"]["training"], metrics["raw_unet"]["training_cost"])
    return [
        [
            name,
            outcome["epochs_run"],
            "yes" if outcome["stopped_early"] else "no",
            outcome["best_epoch"] + 1,  # counted from 1, as a reader counts epochs
            outcome["best_val_score"],
            cost["seconds"],
        ]
        for name, (outcome, cost) in networks.items()
    ]


def _codec_epochs(cfg: ExperimentConfig) -> str:
    """The mask codec's own cap on its epochs, where ``codec.mask_epochs`` sets a lower one."""
    epochs = cfg.mask_codec_epochs
    return f", the mask codec {epochs}" if epochs < cfg.train.epochs else ""


def write_report(run_dir: Path, cfg: ExperimentConfig, metrics: dict) -> None:
    p = metrics["privacysf"]
    (
        Markdown()
        .heading(f"Privacy-SF on {metrics['dataset']}", 1)
        .paragraph(
            f"Image-encoder mode `{p['mode']}`, {cfg.data.size}² images, codes on a "
            f"{cfg.data.size // cfg.codec.downsample}² token grid ({cfg.codec.image_channels} values per "
            f"image token, {cfg.codec.mask_channels} per mask token, sent as {p['wire_dtype']}), "
            f"at most {cfg.train.epochs} epochs per network{_codec_epochs(cfg)} (early stopping after "
            f"{cfg.train.patience} epoch(s) without a better validation score, except the mask codec's), "
            f"seed {cfg.train.seed}. "
            f"Split: {metrics['split']['kind']} ({metrics['split']['slices']['test']} test slices). "
            "Config: `config.json`."
        )
        .extend(scores_section(metrics))
        .bullets(_facts(metrics))
        .extend(ceiling_section(metrics))
        .heading("Training (epochs actually run)")
        .table(
            ["network", "epochs run", "stopped early", "best epoch", "best validation score", "seconds"],
            _training_rows(metrics),
            ["", "d", "", "d", ".4f", ".1f"],
        )
        .paragraph(
            "Validation scores (higher is better): mean Dice for the mask codec and the raw U-Net, the "
            "image encoder's objective score for its mode, minus the mean squared error of mapped codes "
            "for the server mapper. Epochs are counted from 1."
        )
        .heading("Test overlays (image | truth | predictions)")
        .figure("overlays", "figures/overlays.png")
        .heading("What the server receives (codes on their token grid)")
        .figure("codes", "figures/codes.png")
        .heading("Training curves")
        .figure("curves", "figures/curves.png")
        .write(run_dir / "report.md")
    )
