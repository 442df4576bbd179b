"""The attack suite's outputs people read: tables over seeds, the curves, and what the split allows.

Everything here is computed from ``results.json`` alone, so a stopped run, or several runs merged, is
reported by the same code. Each figure is pooled over the attacked queries of every seed, with a 95%
bootstrap interval; every table shows each attack's strongest variant beside the code-free baselines
(the mean leaked image) and the oracle best leaked image, the ceiling of any lookup.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from privacysf.attacks.measures import mean_interval
from privacysf.attacks.setting import planned_rows
from privacysf.common.figures import lines, scatter_labelled
from privacysf.common.runs import atomic_write
from privacysf.config import ExperimentConfig

DICE_FRACTION = 0.90
"""A setting is counted as usable when its Dice is at least this fraction of the raw U-Net's."""


def settings(results: dict) -> list[str]:
    return list(dict.fromkeys(r["setting"] for r in results["settings"]))


def rows_of(results: dict, setting: str) -> list[dict]:
    return [r for r in results["settings"] if r["setting"] == setting]


def pooled(rows: list[dict], part: str, name: str) -> dict | None:
    """An attack's per-query score pooled over the seeds that ran it, with its 95% interval."""
    values = [v for r in rows if name in r["attacks"][part] for v in r["attacks"][part][name]["per_query"]]
    return mean_interval(np.array(values)) if values else None


def _entry(rows: list[dict], part: str, name: str) -> dict:
    """The first seed's entry of an attack (its kind and leaked pairs are the same in every seed)."""
    return next(r["attacks"][part][name] for r in rows if name in r["attacks"][part])


def _names(rows: list[dict], part: str, kind: str | None = None) -> list[str]:
    names = dict.fromkeys(n for r in rows for n in r["attacks"][part])
    return [n for n in names if kind is None or _entry(rows, part, n)["kind"] == kind]


def strongest(rows: list[dict], part: str) -> tuple[str, dict]:
    """The real attack (not a baseline, not an oracle) with the highest pooled score.

    Picking the best of several variants on the same queries favours it a little; every variant's
    own figure is in the detail tables.
    """
    scored = {n: pooled(rows, part, n) for n in _names(rows, part, "attack")}
    name = max(scored, key=lambda n: scored[n]["mean"])
    return name, scored[name]


def per_seed(rows: list[dict], part: str, name: str, metric: str) -> str:
    """An attack's mean per seed (each seed holds out other subjects): the spread intervals miss."""
    return ", ".join(f"{r['attacks'][part][name][metric]:.2f}" for r in rows if name in r["attacks"][part])


def _largest(rows: list[dict], part: str, prefix: str) -> str:
    """The entry name of ``prefix`` with the most leaked pairs (k=all when run)."""
    names = [n for n in _names(rows, part) if n.startswith(prefix)]
    return max(names, key=lambda n: _entry(rows, part, n).get("leaked_pairs", 0))


def _ci(entry: dict | None, digits: int = 3) -> str:
    if entry is None:
        return "–"
    return f"{entry['mean']:.{digits}f} [{entry['ci_low']:.{digits}f}, {entry['ci_high']:.{digits}f}]"


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def reidentification(rows: list[dict]) -> tuple[str, float, float]:
    """Strongest re-identification: from the code norms or from any attack's reconstructions."""
    candidates = {"code norms": _mean([r["attacks"]["encoded"]["reid_top1"] for r in rows])}
    for name in _names(rows, "image", "attack"):
        candidates[f"{name} output"] = _mean(
            [r["attacks"]["image"][name]["reid_top1"] for r in rows if name in r["attacks"]["image"]]
        )
    best = max(candidates, key=candidates.get)
    return best, candidates[best], _mean([r["attacks"]["encoded"]["reid_chance"] for r in rows])


def membership_auc(rows: list[dict]) -> float:
    """max(AUC, 1 − AUC) of the stronger membership attack, averaged over seeds."""
    per_seed = [
        max(max(e["auc"], 1 - e["auc"]) for e in r["attacks"]["membership"].values() if "auc" in e)
        for r in rows
    ]
    return _mean(per_seed)


def missing_rows(cfg: ExperimentConfig, results: dict) -> list[str]:
    """A banner naming the (setting, seed) rows the configuration plans but the results lack."""
    done = {(r["setting"], r["seed"]) for r in results["settings"]}
    missing = [f"{name}, seed {seed}" for name, seed in planned_rows(cfg) if (name, seed) not in done]
    if not missing:
        return []
    return [f"**Partial run**: no results yet for {'; '.join(missing)}. Every row shown is complete.", ""]


def split_summary(results: dict) -> list[str]:
    """What the split allows: cross-subject (well posed) or the attacker's best case."""
    lines_out = []
    for seed in results["seeds"]:
        split = seed["split"]
        cases = split.get("cases", {})
        lines_out.append(
            f"- seed {seed['seed']}: split by {split.get('kind')}; train {cases.get('train')}, val "
            f"{cases.get('val')}, test {cases.get('test')}; shadow data: {seed['public']}; raw U-Net "
            f"Dice {seed['raw_unet']['test']['mean']['dice']['mean']:.3f}"
        )
    posed = [r["attacks"]["well_posed"]["cross_subject"] for r in results["settings"]]
    if posed and all(posed):
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
    return [verdict, "", *lines_out]


def headline_table(results: dict, candidates: int) -> list[str]:
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
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for setting in settings(results):
        rows = rows_of(results, setting)
        dice = _mean([r["dice"] for r in rows])
        ratio = _mean([r["dice_ratio_vs_unet"] for r in rows])
        name, best = strongest(rows, "image")
        mask_name, mask_best = strongest(rows, "mask")
        reid_name, reid, chance = reidentification(rows)
        link = rows[0]["attacks"]["linkage"]
        link_top1 = _mean([r["attacks"]["linkage"]["top1"] for r in rows])
        link_chance = _mean([r["attacks"]["linkage"]["chance"] for r in rows])
        linked = (
            f"{link_top1:.2f} ({link_chance:.2f}; pool {link['pool']})"
            if link_chance > 0
            else "n/a (no other slice of the subject)"
        )
        out.append(
            "| "
            + " | ".join(
                [
                    f"{setting} ({len(rows)} seed{'s' if len(rows) > 1 else ''})",
                    f"{dice:.3f} ({ratio:.2f})",
                    name,
                    _ci(best),
                    per_seed(rows, "image", name, "ssim"),
                    _ci(pooled(rows, "image", _largest(rows, "image", "nearest-code lookup"))),
                    _ci(pooled(rows, "image", _largest(rows, "image", "mean image"))),
                    _ci(pooled(rows, "image", _largest(rows, "image", "oracle best leaked"))),
                    f"{reid:.2f} ({reid_name}; {chance:.2f})",
                    linked,
                    f"{mask_best['mean']:.3f} {mask_name} "
                    f"({pooled(rows, 'mask', _largest(rows, 'mask', 'majority label'))['mean']:.3f})",
                    f"{membership_auc(rows):.2f}",
                ]
            )
            + " |"
        )
    return out + [
        "",
        "SSIM and Dice: mean over the attacked queries of every seed, [95% bootstrap interval over "
        "queries]. Slices of one subject are correlated and each seed holds out few subjects, so the "
        "interval understates the spread across subjects: the per-seed column shows it. Lookup, mean "
        "image and oracle use the most leaked pairs (k = all). Re-identification: which of up to "
        f"{candidates} query images a code or a reconstruction belongs to (chance 1 / that number). "
        "Linkage: whether a query code's nearest code among everything the server holds, less the "
        "query's own neighbouring slices, belongs to the same subject (different scanners make this "
        "easier). Membership: members are training pairs, non-members the test subjects' pairs, so on "
        "a split by subject the AUC also measures the shift between subjects.",
    ]


def detail_table(results: dict, part: str) -> list[str]:
    """Every variant of every attack on ``part`` (image or mask), per setting."""
    metric = "SSIM" if part == "image" else "Dice"
    out = []
    for setting in settings(results):
        rows = rows_of(results, setting)
        out += [f"**{setting}**", "", f"| attack | kind | {metric} [95% CI] |", "|---|---|---|"]
        for name in _names(rows, part):
            kind = _entry(rows, part, name)["kind"]
            out.append(f"| {name} | {kind} | {_ci(pooled(rows, part, name))} |")
        out.append("")
    return out


def key_table(results: dict) -> list[str]:
    """Permutation recovery (with pairs) and the pair-free jigsaw, scored against the true key."""
    keyed_settings = [s for s in settings(results) if "key" in rows_of(results, s)[0]["attacks"]]
    if not keyed_settings:
        return ["No setting with a token permutation was run."]
    out = [
        "| setting | recovery | exact | within one cell | median error (cells) |",
        "|---|---|---|---|---|",
    ]
    for setting in keyed_settings:
        rows = rows_of(results, setting)
        for name in rows[0]["attacks"]["key"]:
            entries = [r["attacks"]["key"][name] for r in rows if name in r["attacks"]["key"]]
            if name == "pair-free jigsaw":
                precision = _mean([e["neighbour_precision"] for e in entries])
                chance = _mean([e["chance"] for e in entries])
                layout = _mean([e["layout_distance_corr"] for e in entries])
                out.append(
                    f"| {setting} | pair-free jigsaw over {entries[0]['codes']} codes (up to a grid "
                    f"symmetry); neighbour precision {precision:.3f} (chance {chance:.4f}), layout distance "
                    f"correlation {layout:.2f} | {_mean([e['exact'] for e in entries]):.3f} | "
                    f"{_mean([e['within_one'] for e in entries]):.3f} | – |"
                )
            else:
                out.append(
                    f"| {setting} | {name} | {_mean([e['exact'] for e in entries]):.3f} | "
                    f"{_mean([e['within_one'] for e in entries]):.3f} | "
                    f"{_mean([e['median_error_cells'] for e in entries]):.1f} |"
                )
    return out + [
        "",
        "Chance for exact placement is 1 / tokens (1/1024 at 128² with the default codec); the jigsaw "
        "is scored at the best of the grid's 8 rotations and reflections, which no pair-free attack "
        "can tell apart, so its chance is up to 8 / tokens.",
    ]


def curve_table(results: dict) -> tuple[list[str], dict[str, tuple[list[float], list[float]]]]:
    """Image inversion SSIM over decoder training steps (most leaked pairs), mean over seeds."""
    series: dict[str, tuple[list[float], list[float]]] = {}
    for setting in settings(results):
        rows = rows_of(results, setting)
        name = _largest(rows, "image", "inversion")
        curves = [r["attacks"]["image"][name]["curve"] for r in rows if name in r["attacks"]["image"]]
        steps = sorted({int(s) for c in curves for s in c})
        series[setting] = (steps, [_mean([c[str(s)] for c in curves if str(s) in c]) for s in steps])
    all_steps = sorted({s for x, _ in series.values() for s in x})
    out = [
        "| setting | " + " | ".join(f"{s} steps" for s in all_steps) + " |",
        "|---|" + "---|" * len(all_steps),
    ]
    for setting, (steps, values) in series.items():
        by_step = dict(zip(steps, values, strict=True))
        out.append(
            f"| {setting} | " + " | ".join(f"{by_step.get(s, float('nan')):.3f}" for s in all_steps) + " |"
        )
    return out, series


def mask_and_membership(results: dict) -> list[str]:
    out = ["| setting | MIA loss threshold AUC [95% CI] | MIA shadow model AUC [95% CI] |", "|---|---|---|"]
    for setting in settings(results):
        for r in rows_of(results, setting):
            m = r["attacks"]["membership"]
            cells = [
                f"{e['auc']:.2f} [{e['ci_low']:.2f}, {e['ci_high']:.2f}]" if "auc" in e else e["skipped"]
                for e in (m["loss_threshold"], m["shadow_model"])
            ]
            out.append(f"| {setting}, seed {r['seed']} | " + " | ".join(cells) + " |")
    return out


def save_curve(path: Path, results: dict) -> None:
    """Privacy–utility: Dice against the strongest image attack's SSIM, with the lookup's ceiling."""
    names = settings(results)
    points = [strongest(rows_of(results, s), "image")[1]["mean"] for s in names]
    dice = [_mean([r["dice"] for r in rows_of(results, s)]) for s in names]
    unet = _mean([seed["raw_unet"]["test"]["mean"]["dice"]["mean"] for seed in results["seeds"]])
    first = rows_of(results, names[0])
    references = {
        "mean image": pooled(first, "image", _largest(first, "image", "mean image"))["mean"],
        "oracle best leaked": pooled(first, "image", _largest(first, "image", "oracle best leaked"))["mean"],
    }
    scatter_labelled(
        path,
        points,
        dice,
        [s.replace(" / key ", "\n") for s in names],
        [rows_of(results, s)[0]["key"] for s in names],
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
    curve, series = curve_table(results)
    lines(
        run_dir / "inversion_curve.png",
        series,
        xlabel="attacker decoder steps (batch 8)",
        ylabel="image inversion SSIM (most leaked pairs)",
        title=f"inversion over training on {results['dataset']}",
    )
    seeds = [s["seed"] for s in results["seeds"]]
    report = [
        f"# Attacks on Privacy-SF: {results['dataset']}",
        "",
        f"{cfg.data.size}² images, up to {cfg.train.epochs} epochs per network, seeds {seeds}. Attacker "
        f"decoders (width {cfg.attack.decoder_width or cfg.codec.width}): {cfg.attack.attacker_steps} Adam "
        "steps of batch 8, and a curve up to "
        f"{max(cfg.attack.curve_steps)} steps for the image inversion from the most leaked pairs. Leaked "
        f"pairs k = {' and '.join(str(k) if k else 'all' for k in cfg.attack.leaked_pairs)} from the "
        "training and validation subjects. Config: `config.json`; every figure below is in `results.json`.",
        "",
        *missing_rows(cfg, results),
        "## Split",
        *split_summary(results),
        "",
        "## Strongest attacks and their baselines",
        *headline_table(results, cfg.attack.candidates),
        "",
        "## Attacks on the key's permutation",
        *key_table(results),
        "",
        "## Image inversion over training steps",
        "![inversion curve](inversion_curve.png)",
        "",
        *curve,
        "",
        "## Privacy–utility curve",
        "![privacy-utility](privacy_utility.png)",
        "",
        "## Every image attack",
        *detail_table(results, "image"),
        "## Every mask attack",
        *detail_table(results, "mask"),
        "## Membership inference (true non-members: the test subjects)",
        *mask_and_membership(results),
        "",
        "## Reconstructions",
        *[
            f"### {r['setting']}, seed {r['seed']}\n![{r['folder']}]({r['folder']}/attacks.png)\n"
            for r in results["settings"]
        ],
    ]
    atomic_write(run_dir / "attacks.md", lambda tmp: tmp.write_text("\n".join(report)))
