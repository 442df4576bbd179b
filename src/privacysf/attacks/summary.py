"""The attack suite's figures over seeds, read from ``results.json`` alone (no formatting here).

Each figure is pooled over the attacked queries of every seed that ran it, with a 95% bootstrap
interval, so the report, the published docs and the README's generated lines quote the same numbers.
"""

from __future__ import annotations

import numpy as np

from privacysf.attacks.measures import mean_interval


def settings(results: dict) -> list[str]:
    return list(dict.fromkeys(r["setting"] for r in results["settings"]))


def rows_of(results: dict, setting: str) -> list[dict]:
    return [r for r in results["settings"] if r["setting"] == setting]


def mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def pooled(rows: list[dict], part: str, name: str) -> dict[str, float]:
    """An attack's per-query score pooled over the seeds that ran it, with its 95% interval."""
    values = [v for r in rows if name in r["attacks"][part] for v in r["attacks"][part][name]["per_query"]]
    if not values:
        raise ValueError(f"no per-query scores of {part} attack {name!r} in these results")
    return mean_interval(np.array(values))


def entry(rows: list[dict], part: str, name: str) -> dict:
    """The first seed's entry of an attack (its kind and leaked pairs are the same in every seed)."""
    return next(r["attacks"][part][name] for r in rows if name in r["attacks"][part])


def names(rows: list[dict], part: str, kind: str | None = None) -> list[str]:
    found = dict.fromkeys(n for r in rows for n in r["attacks"][part])
    return [n for n in found if kind is None or entry(rows, part, n)["kind"] == kind]


def strongest(rows: list[dict], part: str) -> tuple[str, dict]:
    """The real attack (not a baseline, not an oracle) with the highest pooled score.

    Picking the best of several variants on the same queries favours it a little; every variant's
    own figure is in the detail tables.
    """
    scored = {n: pooled(rows, part, n) for n in names(rows, part, "attack")}
    name = max(scored, key=lambda n: scored[n]["mean"])
    return name, scored[name]


def per_seed(rows: list[dict], part: str, name: str, metric: str) -> str:
    """An attack's mean per seed (each seed holds out other subjects): the spread intervals miss."""
    return ", ".join(f"{r['attacks'][part][name][metric]:.2f}" for r in rows if name in r["attacks"][part])


def largest(rows: list[dict], part: str, prefix: str) -> str:
    """The entry name of ``prefix`` with the most leaked pairs (k=all when run)."""
    found = [n for n in names(rows, part) if n.startswith(prefix)]
    return max(found, key=lambda n: entry(rows, part, n).get("leaked_pairs", 0))


def reidentification(rows: list[dict]) -> tuple[str, float, float]:
    """Strongest re-identification: from the code norms or from any attack's reconstructions."""
    candidates = {"code norms": mean([r["attacks"]["encoded"]["reid_top1"] for r in rows])}
    for name in names(rows, "image", "attack"):
        candidates[f"{name} output"] = mean(
            [r["attacks"]["image"][name]["reid_top1"] for r in rows if name in r["attacks"]["image"]]
        )
    best = max(candidates, key=lambda n: candidates[n])
    return best, candidates[best], mean([r["attacks"]["encoded"]["reid_chance"] for r in rows])


def membership_auc(rows: list[dict]) -> float:
    """max(AUC, 1 − AUC) of the stronger membership attack, averaged over seeds."""
    return mean(
        [
            max(max(e["auc"], 1 - e["auc"]) for e in r["attacks"]["membership"].values() if "auc" in e)
            for r in rows
        ]
    )


def cross_subject(results: dict) -> bool:
    """Whether no attacked query's subject is among the leaked pairs or the shadow data, in any row."""
    posed = [r["attacks"]["well_posed"]["cross_subject"] for r in results["settings"]]
    return bool(posed) and all(posed)


def inversion_curves(results: dict) -> dict[str, tuple[list[int], list[float]]]:
    """Image inversion SSIM over decoder training steps (most leaked pairs), mean over seeds."""
    series = {}
    for setting in settings(results):
        rows = rows_of(results, setting)
        name = largest(rows, "image", "inversion")
        curves = [r["attacks"]["image"][name]["curve"] for r in rows if name in r["attacks"]["image"]]
        steps = sorted({int(s) for c in curves for s in c})
        series[setting] = (steps, [mean([c[str(s)] for c in curves if str(s) in c]) for s in steps])
    return series
