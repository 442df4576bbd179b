"""The run report (Markdown with PNGs): metrics table, overlays, code pictures, curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from privacysf.center.pipeline import Center
from privacysf.common.figures import image_grid, pick_rows
from privacysf.common.runs import atomic_write
from privacysf.config import ExperimentConfig
from privacysf.data.prepare import PreparedData
from privacysf.exchange import decode_codes

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


def _row(name: str, test: dict) -> str:
    m = test["mean"]
    return (
        f"| {name} | {m['dice']['mean']:.3f} ± {m['dice']['std']:.3f} | {m['iou']['mean']:.3f} | "
        f"{m['hd95']['mean']:.2f} ± {m['hd95']['std']:.2f} | "
        f"{m['assd']['mean']:.2f} ± {m['assd']['std']:.2f} |"
    )


def write_report(run_dir: Path, cfg: ExperimentConfig, metrics: dict) -> None:
    p = metrics["privacysf"]
    unit = p["test"].get("distance_unit", "mm")
    lines = [
        f"# Privacy-SF on {metrics['dataset']}",
        "",
        f"Image-encoder mode `{p['mode']}`, {cfg.data.size}² images, codes on a "
        f"{cfg.data.size // cfg.codec.downsample}² token grid ({cfg.codec.image_channels} values per image "
        f"token, {cfg.codec.mask_channels} per mask token, sent as {p['wire_dtype']}), "
        f"{cfg.train.epochs} epochs per network, seed {cfg.train.seed}. Split: {metrics['split']['kind']} "
        f"({metrics['split']['slices']['test']} test slices). Config: `config.json`.",
        "",
        f"| method | Dice | IoU | HD95 ({unit}) | ASSD ({unit}) |",
        "|---|---|---|---|---|",
        _row("Privacy-SF", p["test"]),
    ]
    if "raw_unet" in metrics:
        lines.append(_row("raw U-Net (sees pixels)", metrics["raw_unet"]["test"]))
    lines += [
        "",
        f"- Mask-codec ceiling (round-trip Dice of true test masks): {p['mask_codec_ceiling_dice']:.3f}",
    ]
    cases = p["test"]["over_cases"]
    if cases["n_cases"] > 1:
        lines.append(
            f"- Privacy-SF Dice over {cases['n_cases']} test cases (each case averaged first): "
            f"{cases['dice']['mean']:.3f} ± {cases['dice']['std']:.3f}"
        )
    if "dice_ratio_vs_unet" in metrics:
        lines.append(f"- Privacy-SF / raw U-Net mean Dice: {metrics['dice_ratio_vs_unet']:.3f}")
    pay = p["payload_bytes_per_query"]
    lines += [
        f"- Payload per query: {pay['up']} B up + {pay['down']} B down = {pay['total']} B; the raw image "
        f"is {p['raw_image_bytes']} B ({p['raw_image_dtype']})",
        f"- Training seconds: {p['training_seconds']}",
        "",
        "## Test overlays (image | truth | predictions)",
        "![overlays](figures/overlays.png)",
        "",
        "## What the server receives (codes on their token grid)",
        "![codes](figures/codes.png)",
        "",
        "## Training curves",
        "![curves](figures/curves.png)",
        "",
    ]
    atomic_write(run_dir / "report.md", lambda tmp: tmp.write_text("\n".join(lines)))
