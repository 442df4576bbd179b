"""The attack suite's outputs people read: the attack table, the privacy–utility curve, the targets."""

from __future__ import annotations

from pathlib import Path

from privacysf.config import ExperimentConfig
from privacysf.figures import scatter_labelled
from privacysf.runs import atomic_write

SSIM_TARGET = 0.30
"""Inversion SSIM at k = 100 that some setting must reach (issue target)."""
DICE_FRACTION_TARGET = 0.90
AUC_TARGET = 0.60
TARGET_K = 100


def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _auc(entry: dict) -> str:
    if "auc" not in entry:
        return "skipped"
    return f"{entry['auc']:.2f} [{entry['ci_low']:.2f}, {entry['ci_high']:.2f}]"


def leakage_auc(entry: dict) -> float:
    """max(AUC, 1 − AUC): an AUC well below 0.5 is a rule learnt upside down, still a leak."""
    return max(entry["auc"], 1 - entry["auc"]) if "auc" in entry else 0.5


def ssim_gain(attack: dict, baseline: dict) -> float:
    """Where an attack's SSIM lies between the mean image (0) and a perfect reconstruction (1).

    Brain slices have a large constant background, so even the mean image scores a high SSIM; the
    gain says how much the codes add beyond that trivial guess.
    """
    return (attack["ssim"] - baseline["ssim"]) / max(1 - baseline["ssim"], 1e-9)


def inversion_at(row: dict, k: int, part: str = "image") -> dict | None:
    """The inversion attack whose leaked-pair count is closest to ``k`` (k = 100 may exceed the pool)."""
    entries = [v for n, v in row["attacks"][part].items() if n.startswith("inversion")]
    return min(entries, key=lambda e: abs(e["leaked_pairs"] - k)) if entries else None


def _inversions(row: dict) -> list[str]:
    return [n for n in row["attacks"]["image"] if n.startswith("inversion")]


def attack_table(results: dict) -> list[str]:
    rows = results["settings"]
    ks = _inversions(rows[0])
    head = (
        ["setting", "mapper", "Dice (× U-Net)", "norm corr", "re-id top-1"]
        + [f"image {k} SSIM / PSNR" for k in ks]
        + ["image shadow SSIM"]
        + [f"mask {k} Dice" for k in ks]
        + ["mask shadow Dice", "MIA loss AUC [95% CI]", "MIA shadow AUC [95% CI]"]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        a = r["attacks"]
        enc = a["encoded"]
        mask_shadow = a["mask"]["shadow codec"]
        cells = (
            [r["setting"], r["mapper"], f"{r['dice']:.3f} ({r['dice_ratio_vs_unet']:.2f})"]
            + [
                f"{enc['norm_image_correlation']:.2f}",
                f"{enc['reid_top1']:.2f} (chance {enc['reid_chance']:.2f})",
            ]
            + [f"{a['image'][k]['ssim']:.3f} / {a['image'][k]['psnr']:.1f}" for k in ks]
            + [_fmt(a["image"]["shadow codec"]["ssim"])]
            + [_fmt(a["mask"][k]["dice"]) for k in ks]
            + [_fmt(mask_shadow.get("dice")) if "dice" in mask_shadow else "n/a"]
            + [_auc(a["membership"]["loss_threshold"]), _auc(a["membership"]["shadow_model"])]
        )
        lines.append("| " + " | ".join(cells) + " |")
    first = rows[0]["attacks"]
    baselines = ", ".join(
        f"{k}: SSIM {first['image'][k]['baseline_mean_image']['ssim']:.3f}, "
        f"PSNR {first['image'][k]['baseline_mean_image']['psnr']:.1f}"
        for k in ks
    )
    majority = ", ".join(f"{k}: {first['mask'][k]['baseline_majority_dice']:.3f}" for k in ks)
    return lines + [
        "",
        f"Trivial baselines: the mean of the leaked images scores {baselines}; "
        f"the per-pixel majority label of the leaked masks scores Dice {majority}. "
        "MIA: an AUC below 0.5 is a rule learnt upside down; max(AUC, 1 − AUC) is the leak it shows.",
    ]


def targets(results: dict) -> list[str]:
    unet = results["raw_unet"]["test"]["mean"]["dice"]["mean"]
    lines = []
    candidates = [
        (inversion_at(r, TARGET_K), r)
        for r in results["settings"]
        if r["dice"] >= DICE_FRACTION_TARGET * unet
    ]
    if candidates:
        attack, row = min(candidates, key=lambda c: c[0]["ssim"])
        ssim, mean_image = attack["ssim"], attack["baseline_mean_image"]["ssim"]
        verdict = "met" if ssim <= SSIM_TARGET else f"missed by {ssim - SSIM_TARGET:.3f}"
        lines.append(
            f"- Inversion SSIM ≤ {SSIM_TARGET} at k ≈ {TARGET_K} with Dice ≥ {DICE_FRACTION_TARGET} × U-Net "
            f"({DICE_FRACTION_TARGET * unet:.3f}): best is {row['setting']} with SSIM {ssim:.3f} and Dice "
            f"{row['dice']:.3f}: **{verdict}**. For scale: the mean of the leaked images alone scores SSIM "
            f"{mean_image:.3f} (gain over it: {ssim_gain(attack, attack['baseline_mean_image']):.2f})."
        )
    else:
        lines.append(
            f"- No setting reached Dice ≥ {DICE_FRACTION_TARGET} × U-Net: the SSIM target is **missed**."
        )
    default = next((r for r in results["settings"] if r["mode"] == "task" and r["key"] == "none"), None)
    if default:
        auc = max(leakage_auc(entry) for entry in default["attacks"]["membership"].values())
        verdict = "met" if auc <= AUC_TARGET else f"missed by {auc - AUC_TARGET:.2f}"
        lines.append(
            f"- Membership inference AUC ≤ {AUC_TARGET} for the default setting (task, no key): highest "
            f"max(AUC, 1 − AUC) {auc:.2f}: **{verdict}**."
        )
    return lines


def save_curve(path: Path, results: dict) -> None:
    rows = results["settings"]
    unet = results["raw_unet"]["test"]["mean"]["dice"]["mean"]
    scatter_labelled(
        path,
        [r["strongest_image_ssim"] for r in rows],
        [r["dice"] for r in rows],
        [r["setting"].replace(" / key ", "\n") for r in rows],
        [r["key"] for r in rows],
        xlabel="strongest image attack SSIM (lower = more private)",
        ylabel="Dice through Privacy-SF",
        title=f"privacy–utility on {results['dataset']}",
        hlines={f"{DICE_FRACTION_TARGET} × raw U-Net": DICE_FRACTION_TARGET * unet, "raw U-Net": unet},
        vlines={f"SSIM {SSIM_TARGET}": SSIM_TARGET},
    )


def write_attack_report(run_dir: Path, cfg: ExperimentConfig, results: dict) -> None:
    save_curve(run_dir / "privacy_utility.png", results)
    unet = results["raw_unet"]["test"]["mean"]["dice"]["mean"]
    curve = [
        "| setting | Dice | strongest image attack | its SSIM | inversion k≈100 SSIM (gain) |",
        "|---|---|---|---|---|",
    ]
    for r in results["settings"]:
        at_k = inversion_at(r, TARGET_K)
        gain = ssim_gain(at_k, at_k["baseline_mean_image"])
        curve.append(
            f"| {r['setting']} | {r['dice']:.3f} | {r['strongest_image_attack']} | "
            f"{r['strongest_image_ssim']:.3f} | {at_k['ssim']:.3f} ({gain:.2f}) |"
        )
    lines = [
        f"# Attacks on Privacy-SF: {results['dataset']}",
        "",
        f"{cfg.data.size}² images, {cfg.train.epochs} epochs per network, seed {cfg.train.seed}; raw U-Net "
        f"Dice {unet:.3f} on the same split. Shadow attacker's public data: {results['public_dataset']}. "
        f"Attacker decoders: {cfg.attack.attacker_steps} Adam steps of batch 8. Config: `config.json`; "
        "every figure below is in `results.json`.",
        "",
        *(
            []
            if "seconds" in results
            else [
                f"**Partial run**: stopped after {len(results['settings'])} of the configured settings; "
                "every row below is complete, settings not listed were not run.",
                "",
            ]
        ),
        "## Targets",
        *targets(results),
        "",
        "## Attack table",
        *attack_table(results),
        "",
        "## Privacy–utility curve",
        "![privacy-utility](privacy_utility.png)",
        "",
        *curve,
        "",
        "Gain: where the SSIM lies between the mean of the leaked images (0) and a perfect "
        "reconstruction (1).",
        "",
        "## Reconstructions",
        *[f"### {r['setting']}\n![{r['folder']}]({r['folder']}/attacks.png)\n" for r in results["settings"]],
    ]
    atomic_write(run_dir / "attacks.md", lambda tmp: tmp.write_text("\n".join(lines)))
