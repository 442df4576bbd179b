"""The attack suite's outputs people read: tables over seeds, the curves, and what the split allows.

Everything here is computed from ``results.json`` alone (through :mod:`privacysf.attacks.summary`),
so a stopped run, or several runs merged, is reported by the same code. Every table shows each
attack's strongest variant beside the code-free baselines (the mean leaked image) and the oracle best
leaked image, the ceiling of any lookup.
"""

from __future__ import annotations

from pathlib import Path

from privacysf.attacks.setting import planned_rows
from privacysf.attacks.summary import (
    cross_subject,
    entry,
    inversion_curves,
    largest,
    mean,
    membership_auc,
    names,
    per_seed,
    pooled,
    reidentification,
    rows_of,
    settings,
    strongest,
)
from privacysf.common.figures import lines, scatter_labelled
from privacysf.common.markdown import Markdown, interval
from privacysf.config import ExperimentConfig

DICE_FRACTION = 0.90
"""A setting is counted as usable when its Dice is at least this fraction of the raw U-Net's."""

BASELINES = ("nearest-code lookup", "mean image", "oracle best leaked")
"""The image entries shown beside the strongest attack, each at its most leaked pairs."""


def _ci(score: dict[str, float], digits: int = 3) -> str:
    return interval(score["mean"], score["ci_low"], score["ci_high"], digits)


def missing_rows(cfg: ExperimentConfig, results: dict) -> Markdown:
    """A banner naming the (setting, seed) rows the configuration plans but the results lack."""
    done = {(r["setting"], r["seed"]) for r in results["settings"]}
    missing = [f"{name}, seed {seed}" for name, seed in planned_rows(cfg) if (name, seed) not in done]
    if not missing:
        return Markdown()
    return Markdown().paragraph(
        f"**Partial run**: no results yet for {'; '.join(missing)}. Every row shown is complete."
    )


def split_summary(results: dict) -> Markdown:
    """What the split allows: cross-subject (well posed) or the attacker's best case."""
    seeds = []
    for seed in results["seeds"]:
        split = seed["split"]
        cases = split.get("cases", {})
        seeds.append(
            f"seed {seed['seed']}: split by {split.get('kind')}; train {cases.get('train')}, val "
            f"{cases.get('val')}, test {cases.get('test')}; shadow data: {seed['public']}; raw U-Net "
            f"Dice {seed['raw_unet']['test']['mean']['dice']['mean']:.3f}"
        )
    if cross_subject(results):
        verdict = (
            "**Cross-subject (well posed):** no attacked query comes from a subject that any leaked pair "
            "or the shadow data contains."
        )
    else:
        verdict = (
            "**Attacker's best case, not a privacy figure:** the attacked subjects also appear among the "
            "leaked pairs or the shadow data (a single-subject slab split gives every query a "
            "near-duplicate leaked slice), so a lookup already scores what an inversion does."
        )
    return Markdown().paragraph(verdict).bullets(seeds)


def _headline_row(setting: str, rows: list[dict]) -> list[str | None]:
    name, best = strongest(rows, "image")
    mask_name, mask_best = strongest(rows, "mask")
    reid_name, reid, chance = reidentification(rows)
    link_top1 = mean([r["attacks"]["linkage"]["top1"] for r in rows])
    link_chance = mean([r["attacks"]["linkage"]["chance"] for r in rows])
    linked = (
        f"{link_top1:.2f} ({link_chance:.2f}; pool {rows[0]['attacks']['linkage']['pool']})"
        if link_chance > 0
        else "n/a (no other slice of the subject)"
    )
    majority = pooled(rows, "mask", largest(rows, "mask", "majority label"))["mean"]
    return [
        f"{setting} ({len(rows)} seed{'s' if len(rows) > 1 else ''})",
        f"{mean([r['dice'] for r in rows]):.3f} ({mean([r['dice_ratio_vs_unet'] for r in rows]):.2f})",
        name,
        _ci(best),
        per_seed(rows, "image", name, "ssim"),
        *(_ci(pooled(rows, "image", largest(rows, "image", k))) for k in BASELINES),
        f"{reid:.2f} ({reid_name}; {chance:.2f})",
        linked,
        f"{mask_best['mean']:.3f} {mask_name} ({majority:.3f})",
        f"{membership_auc(rows):.2f}",
    ]


def headline_table(results: dict, candidates: int) -> Markdown:
    head = [
        "setting",
        "Dice (× U-Net)",
        "strongest image attack",
        "its SSIM [95% CI]",
        "per seed",
        "nearest-code lookup",
        "mean image (no code)",
        "oracle best leaked",
        "re-id top-1 (strongest; chance)",
        "linkage top-1 (chance)",
        "strongest mask attack Dice (majority label)",
        "MIA max(AUC, 1−AUC)",
    ]
    rows = [_headline_row(s, rows_of(results, s)) for s in settings(results)]
    return (
        Markdown()
        .table(head, rows)
        .paragraph(
            "SSIM and Dice: mean over the attacked queries of every seed, [95% bootstrap interval over "
            "queries]. Slices of one subject are correlated and each seed holds out few subjects, so the "
            "interval understates the spread across subjects: the per-seed column shows it. Lookup, mean "
            "image and oracle use the most leaked pairs (k = all). Re-identification: which of up to "
            f"{candidates} query images a code or a reconstruction belongs to (chance 1 / that number). "
            "Linkage: whether a query code's nearest code among everything the server holds, less the "
            "query's own neighbouring slices, belongs to the same subject (different scanners make this "
            "easier). Membership: members are training pairs, non-members the test subjects' pairs, so on "
            "a split by subject the AUC also measures the shift between subjects."
        )
    )


def detail_table(results: dict, part: str) -> Markdown:
    """Every variant of every attack on ``part`` (image or mask), per setting."""
    metric = "SSIM" if part == "image" else "Dice"
    out = Markdown()
    for setting in settings(results):
        rows = rows_of(results, setting)
        table = [[n, entry(rows, part, n)["kind"], _ci(pooled(rows, part, n))] for n in names(rows, part)]
        out.banner(setting).table(["attack", "kind", f"{metric} [95% CI]"], table)
    return out


def _key_row(setting: str, name: str, entries: list[dict]) -> list[str | None]:
    exact, within = mean([e["exact"] for e in entries]), mean([e["within_one"] for e in entries])
    if name != "pair-free jigsaw":
        return [
            setting,
            name,
            f"{exact:.3f}",
            f"{within:.3f}",
            f"{mean([e['median_error_cells'] for e in entries]):.1f}",
        ]
    recovery = (
        f"pair-free jigsaw over {entries[0]['codes']} codes (up to a grid symmetry); neighbour precision "
        f"{mean([e['neighbour_precision'] for e in entries]):.3f} (chance "
        f"{mean([e['chance'] for e in entries]):.4f}), layout distance correlation "
        f"{mean([e['layout_distance_corr'] for e in entries]):.2f}"
    )
    return [setting, recovery, f"{exact:.3f}", f"{within:.3f}", None]


def key_table(results: dict) -> Markdown:
    """Permutation recovery (with pairs) and the pair-free jigsaw, scored against the true key."""
    keyed = [s for s in settings(results) if "key" in rows_of(results, s)[0]["attacks"]]
    if not keyed:
        return Markdown().paragraph("No setting with a token permutation was run.")
    table = []
    for setting in keyed:
        rows = rows_of(results, setting)
        for name in rows[0]["attacks"]["key"]:
            entries = [r["attacks"]["key"][name] for r in rows if name in r["attacks"]["key"]]
            table.append(_key_row(setting, name, entries))
    return (
        Markdown()
        .table(["setting", "recovery", "exact", "within one cell", "median error (cells)"], table)
        .paragraph(
            "Chance for exact placement is 1 / tokens (1/1024 at 128² with the default codec); the jigsaw "
            "is scored at the best of the grid's 8 rotations and reflections, which no pair-free attack "
            "can tell apart, so its chance is up to 8 / tokens."
        )
    )


def curve_table(series: dict[str, tuple[list[int], list[float]]]) -> Markdown:
    all_steps = sorted({s for x, _ in series.values() for s in x})
    table = []
    for setting, (steps, values) in series.items():
        by_step = dict(zip(steps, values, strict=True))
        table.append([setting, *(by_step.get(s) for s in all_steps)])
    return Markdown().table(
        ["setting", *(f"{s} steps" for s in all_steps)], table, ["", *[".3f"] * len(all_steps)]
    )


def membership_table(results: dict) -> Markdown:
    table = []
    for setting in settings(results):
        for r in rows_of(results, setting):
            m = r["attacks"]["membership"]
            cells = [
                interval(e["auc"], e["ci_low"], e["ci_high"], 2) if "auc" in e else e["skipped"]
                for e in (m["loss_threshold"], m["shadow_model"])
            ]
            table.append([f"{setting}, seed {r['seed']}", *cells])
    head = ["setting", "MIA loss threshold AUC [95% CI]", "MIA shadow model AUC [95% CI]"]
    return Markdown().table(head, table)


def save_curve(path: Path, results: dict) -> None:
    """Privacy–utility: Dice against the strongest image attack's SSIM, with the lookup's ceiling."""
    shown = settings(results)
    points = [strongest(rows_of(results, s), "image")[1]["mean"] for s in shown]
    dice = [mean([r["dice"] for r in rows_of(results, s)]) for s in shown]
    unet = mean([seed["raw_unet"]["test"]["mean"]["dice"]["mean"] for seed in results["seeds"]])
    first = rows_of(results, shown[0])
    references = {
        name: pooled(first, "image", largest(first, "image", name))["mean"]
        for name in ("mean image", "oracle best leaked")
    }
    scatter_labelled(
        path,
        points,
        dice,
        [s.replace(" / key ", "\n") for s in shown],
        [rows_of(results, s)[0]["key"] for s in shown],
        xlabel="strongest image attack SSIM (lower = more private)",
        ylabel="Dice through Privacy-SF",
        title=f"privacy–utility on {results['dataset']}",
        hlines={f"{DICE_FRACTION} × raw U-Net": DICE_FRACTION * unet, "raw U-Net": unet},
        vlines=references,
    )


def write_attack_report(run_dir: Path, cfg: ExperimentConfig, results: dict) -> None:
    """``attacks.md``, ``privacy_utility.png`` and ``inversion_curve.png`` from ``results`` alone."""
    if not results["settings"]:
        return
    save_curve(run_dir / "privacy_utility.png", results)
    series = inversion_curves(results)
    lines(
        run_dir / "inversion_curve.png",
        series,
        xlabel="attacker decoder steps (batch 8)",
        ylabel="image inversion SSIM (most leaked pairs)",
        title=f"inversion over training on {results['dataset']}",
    )
    attack = cfg.attack
    leaked = " and ".join(str(k) if k else "all" for k in attack.leaked_pairs)
    report = (
        Markdown()
        .heading(f"Attacks on Privacy-SF: {results['dataset']}", 1)
        .paragraph(
            f"{cfg.data.size}² images, up to {cfg.train.epochs} epochs per network, seeds "
            f"{[s['seed'] for s in results['seeds']]}. Attacker decoders (width "
            f"{attack.decoder_width or cfg.codec.width}): {attack.attacker_steps} Adam steps of batch 8, "
            f"and a curve up to {max(attack.curve_steps)} steps for the image inversion from the most "
            f"leaked pairs. Leaked pairs k = {leaked} "
            "from the training and validation subjects. Config: `config.json`; every figure below is in "
            "`results.json`."
        )
        .extend(missing_rows(cfg, results))
        .heading("Split")
        .extend(split_summary(results))
        .heading("Strongest attacks and their baselines")
        .extend(headline_table(results, attack.candidates))
        .heading("Attacks on the key's permutation")
        .extend(key_table(results))
        .heading("Image inversion over training steps")
        .figure("inversion curve", "inversion_curve.png")
        .extend(curve_table(series))
        .heading("Privacy–utility curve")
        .figure("privacy-utility", "privacy_utility.png")
        .heading("Every image attack")
        .extend(detail_table(results, "image"))
        .heading("Every mask attack")
        .extend(detail_table(results, "mask"))
        .heading("Membership inference (true non-members: the test subjects)")
        .extend(membership_table(results))
        .heading("Reconstructions")
    )
    for r in results["settings"]:
        report.heading(f"{r['setting']}, seed {r['seed']}", 3).figure(
            r["folder"], f"{r['folder']}/attacks.png"
        )
    report.write(run_dir / "attacks.md")
