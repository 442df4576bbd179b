"""Copy attack-suite runs' results and pictures (no checkpoints, no keys) into docs/privacy/.

    python tools/publish_attacks.py RUN_FOLDER [RUN_FOLDER ...]
    python tools/publish_attacks.py --combine NAME RUN_FOLDER [RUN_FOLDER ...]

Each run lands in ``docs/privacy/<run folder name>/``: ``results.json``, ``config.json`` and every
setting's reconstruction picture, with ``attacks.md`` and the curves written from ``results.json`` by
the current report code (a stopped run publishes the rows it finished). With ``--combine NAME``, runs
of one dataset (e.g. the same command run for different seeds or settings) are merged into
``docs/privacy/NAME/`` instead: one report over every (setting, seed) row; where runs repeat a row,
the later run's is kept. The published configuration is the last run's with the seeds of all runs, so
the report's "partial run" banner names any planned row that none of the runs finished.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from privacysf.attacks.report import write_attack_report
from privacysf.config import ExperimentConfig

DOCS = Path(__file__).resolve().parents[1] / "docs" / "privacy"


def merge(loaded: list[dict]) -> dict:
    """One results dict over the rows of several runs of one dataset (later runs win)."""
    if len({res["dataset"] for res in loaded}) != 1:
        raise SystemExit("--combine takes runs of one dataset")
    rows: dict[tuple[str, int], dict] = {}
    seeds: dict[int, dict] = {}
    for res in loaded:
        seeds.update({s["seed"]: s for s in res["seeds"]})
        rows.update({(r["setting"], r["seed"]): r for r in res["settings"]})
    merged = {"dataset": loaded[0]["dataset"], "seeds": [seeds[k] for k in sorted(seeds)]}
    merged["settings"] = sorted(rows.values(), key=lambda r: r["seed"])  # stable: run order within a seed
    merged["seconds"] = sum(res.get("seconds", 0.0) for res in loaded)
    return merged


def publish(name: str, runs: list[Path]) -> Path:
    target = DOCS / name
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    loaded = [json.loads((run / "results.json").read_text()) for run in runs]
    results = merge(loaded)
    (target / "results.json").write_text(json.dumps(results, indent=2))
    configs = [ExperimentConfig.load_run(run / "config.json") for run in runs]
    seeds = sorted({seed for cfg in configs for seed in cfg.attack.seeds})
    cfg = configs[-1].override([f"attack.seeds={json.dumps(seeds)}"])  # the header and plan cover all seeds
    cfg.save(target / "config.json")
    for run in runs:
        for picture in run.glob("seed*/*/attacks.png"):
            folder = target / picture.parent.parent.name / picture.parent.name
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copy2(picture, folder / picture.name)
    (target / "RUNS").write_text("".join(f"{run.name}\n" for run in runs))
    write_attack_report(target, cfg, results)
    return target


def main(argv: list[str]) -> None:
    if argv[:1] == ["--combine"]:
        if len(argv) < 3:
            raise SystemExit(__doc__)
        print(publish(argv[1], [Path(a) for a in argv[2:]]))
        return
    if not argv:
        raise SystemExit(__doc__)
    for run in argv:
        print(publish(Path(run).name, [Path(run)]))


if __name__ == "__main__":
    main(sys.argv[1:])
