"""The augmentation study's table: per training share, center and policy, the mean 3-D Dice over
seeds and its change against the reference, each with a 95 % Student-t interval over seeds.

Changes are paired within a seed (same split, same center training, same test cases), so the
interval is that of the per-seed differences, much narrower than the spread of Dice across splits.
The reference of every change is the first center the study trained (``AblationConfig.centers``)
with no augmentation: the Privacy-SF a user gets without the study's settings.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

from privacysf.common.markdown import Markdown, interval

REFERENCE_POLICY = "none"


def t_interval(values: Sequence[float]) -> tuple[float, float, float]:
    """Mean and 95 % Student-t interval of ``values`` (one per seed); NaN bounds below two values."""
    v = np.asarray(values, float)
    mean = float(v.mean())
    if len(v) < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    return mean, mean - half, mean + half


def _shown(values: Sequence[float]) -> str:
    mean, low, high = t_interval(values)
    return f"{mean:+.3f}" if math.isnan(low) else interval(mean, low, high, 3)


def _level(values: Sequence[float]) -> str:
    return _shown(values).removeprefix("+")


def reference_center(summary: dict) -> str:
    """The center every change is measured against: the first the study trained (JSON keeps order)."""
    return next(iter(summary["cells"][0]["centers"]))


def join_cells(cells: list[dict]) -> list[dict]:
    """Cells of studies that trained different centers on the same splits, one per (share, seed) with
    every study's centers in the order given, so a later center's changes pair with an earlier
    reference on the same test cases.

    Raises ValueError where the joined cells are not one split (different training slice counts or raw
    U-Net Dice), where two studies trained a center of the same name on one cell (which to keep?), or
    where a cell lacks a center the others have (its changes could not be paired)."""

    def where(key: tuple) -> str:
        return f"share {key[0]:g}, seed {key[1]}"

    by_cell: dict[tuple, dict] = {}
    for cell in cells:
        key = (cell["fraction"], cell["seed"])
        if key not in by_cell:
            by_cell[key] = {
                **cell,
                "centers": dict(cell["centers"]),
                "equivariance": dict(cell.get("equivariance", {})),
            }
            continue
        joined = by_cell[key]
        unets = [c["unet"]["dice_3d"] for c in (joined, cell) if "unet" in c]
        if cell["train_slices"] != joined["train_slices"] or len(set(unets)) > 1:
            raise ValueError(
                f"{where(key)}: the studies' training slices or raw U-Nets differ, so their splits do"
            )
        if same := set(cell["centers"]) & set(joined["centers"]):
            raise ValueError(f"{where(key)}: center {', '.join(sorted(same))} was trained by two studies")
        joined["centers"].update(cell["centers"])
        joined["equivariance"].update(cell.get("equivariance", {}))
    everywhere = set().union(*(c["centers"] for c in by_cell.values()))
    for key, cell in by_cell.items():
        if missing := everywhere - set(cell["centers"]):
            raise ValueError(f"{where(key)}: no run of center {', '.join(sorted(missing))}")
    return list(by_cell.values())


def ablation_rows(summary: dict) -> list[list[str]]:
    """One row per share × center × policy (and one for the raw U-Net per share) over every seed the
    share has finished; changes and gaps are paired within each seed."""
    reference_name = reference_center(summary)
    rows = []
    for share in dict.fromkeys(c["fraction"] for c in summary["cells"]):
        cells = [c for c in summary["cells"] if c["fraction"] == share]
        reference = [c["centers"][reference_name][REFERENCE_POLICY]["dice_3d"] for c in cells]
        unet = [c["unet"]["dice_3d"] for c in cells if "unet" in c]
        slices = sorted({c["train_slices"] for c in cells})
        label = f"{share:g} ({'-'.join(map(str, dict.fromkeys([slices[0], slices[-1]])))} slices)"
        for center in cells[0]["centers"]:
            own = [c["centers"][center][REFERENCE_POLICY]["dice_3d"] for c in cells]
            for policy in cells[0]["centers"][center]:
                dice = [c["centers"][center][policy]["dice_3d"] for c in cells]
                change = [d - r for d, r in zip(dice, reference, strict=True)]
                within = [d - r for d, r in zip(dice, own, strict=True)]
                gap = [u - d for u, d in zip(unet, dice, strict=True)] if len(unet) == len(cells) else []
                rows.append(
                    [
                        label,
                        center,
                        policy,
                        _level(dice),
                        _shown(change),
                        _shown(within),
                        _shown(gap) if gap else "–",
                    ]
                )
        if len(unet) == len(cells):
            rows.append([label, "–", "raw U-Net (image-space augmentation)", _level(unet), "–", "–", "–"])
    return rows


def equivariance_rows(summary: dict) -> list[list[str]]:
    """Per center and transform: the relative equivariance error of each encoder, mean over the
    cells (shares and seeds) that measured it, and the worst cell."""
    measured = [cell["equivariance"] for cell in summary["cells"] if cell.get("equivariance")]
    rows = []
    for center in measured[0] if measured else ():
        for i, first in enumerate(measured[0][center]):
            image = [cell[center][i]["image_relative"] for cell in measured]
            mask = [cell[center][i]["mask_relative"] for cell in measured]
            rows.append(
                [
                    center,
                    first["transform"],
                    first["server_option"] or "–",
                    f"{np.mean(image):.3f} (worst {max(image):.3f})",
                    f"{np.mean(mask):.3f} (worst {max(mask):.3f})",
                ]
            )
    return rows


def ablation_markdown(summary: dict) -> str:
    seeds = sorted({c["seed"] for c in summary["cells"]})
    doc = Markdown().heading(
        f"Augmentation study on {summary['dataset']} ({summary['mode']} mode), seeds "
        + ", ".join(map(str, seeds)),
        1,
    )
    doc.paragraph(
        "3-D per-case foreground Dice on each seed's test cases: mean over seeds [95 % t-interval over "
        "seeds]. Centers are named by codec.equivariance and, where not the default, codec.padding and "
        'codec.symmetry; a policy ending in ", N views" trained the mapper on the center\'s codes of N '
        'views of each training slice (codec.upload_views), and one with ", shifts up to K" shifted '
        "by up to K whole tokens (augment.max_shift). Change: "
        f"paired within each seed against center {reference_center(summary)} with no augmentation; "
        "within center: against the same center's row with no augmentation (at the first count of views). "
        "Gap: raw U-Net minus this row, paired likewise (positive: the U-Net is ahead)."
    )
    doc.table(
        ["training share", "center", "policy", "3-D Dice", "change", "within center", "gap to raw U-Net"],
        ablation_rows(summary),
    )
    if errors := equivariance_rows(summary):
        doc.paragraph(
            "Equivariance error of each center's encoders on the test slices: ‖E(T x) − T E(x)‖ over "
            "‖T E(x)‖ for each transform T, mean over the cells above (worst cell in brackets). A "
            "policy teaches the server true pairs only where its transforms' errors are small."
        )
        doc.table(["center", "transform", "server option", "image code", "mask code"], errors)
    return doc.text()
