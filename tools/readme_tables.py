"""Regenerate README.md's result blocks from the result files checked into docs/.

    python tools/readme_tables.py           # rewrite every block in README.md
    python tools/readme_tables.py --check   # exit 1, naming the blocks, if any differs

A block is the text between ``<!-- generated: NAME -->`` and ``<!-- end -->``; its body is what
``BLOCKS[NAME]`` writes, through the same code as the generated reports, from the result files named
in ``SOURCES``. README figures are therefore never typed by hand: a hand edit or a stale copy makes
``--check`` (and the test that runs it) fail.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

from privacysf.attacks.summary import pooled, rows_of, settings, strongest
from privacysf.benchmark.jobs import PRIVACYSF, REFERENCE, UNET
from privacysf.benchmark.report import pm, targets_table
from privacysf.benchmark.targets import accuracy_summary
from privacysf.common.markdown import Markdown, interval
from privacysf.workflows.federate import dice_section, dice_table, targets

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {
    "privacy": ["docs/privacy/brain-3subjects/results.json"],
    "multicenter": [  # the first run stopped after three modes; the second ran the other three
        "docs/runs/20261129-230844-federate-brain-3c-partial/status.json",
        "docs/runs/20261130-023258-federate-brain-3c/metrics.json",
    ],
    "bench-dice": ["docs/benchmarks/results.json"],
    "bench-targets": ["docs/benchmarks/results.json"],
}
BLOCK = re.compile(r"(<!-- generated: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- end -->)", re.DOTALL)
BENCH_METHODS = [f"{PRIVACYSF} task", f"{PRIVACYSF} autoencoder", f"{PRIVACYSF} private", UNET, REFERENCE]
PRIVACY_COLUMNS = [
    "nearest-code lookup k=10",
    "inversion k=all",
    "mean image k=all",
    "oracle best leaked k=all",
]


def _load(root: Path, name: str) -> list[dict]:
    return [json.loads((root / path).read_text()) for path in SOURCES[name]]


def privacy(root: Path) -> Markdown:
    """Per key setting: the strongest image attack and the lookup, inversion and baselines beside it."""
    (results,) = _load(root, "privacy")
    table = []
    for setting in settings(results):
        rows = rows_of(results, setting)
        name, best = strongest(rows, "image")
        shown = f"{name}: {interval(best['mean'], best['ci_low'], best['ci_high'], 3)}"
        table.append([setting, shown, *(pooled(rows, "image", c)["mean"] for c in PRIVACY_COLUMNS)])
    head = ["setting", "strongest image attack: SSIM [95% CI]", *PRIVACY_COLUMNS]
    return Markdown().table(head, table, ["", "", *[".3f"] * len(PRIVACY_COLUMNS)])


def multicenter(root: Path) -> Markdown:
    """Mean test Dice per mode and center over both brain-3c runs, and the two targets."""
    partial, final = _load(root, "multicenter")
    centers = final["centers"]
    table = dice_table({**partial["results"], **final["test"]}, centers)
    judged = targets(table, centers)
    beats = "met" if judged["pooled_beats_alone_at_every_center"] else "missed"
    gains = ", ".join(f"{c} {table['pooled'][c] - table['alone'][c]:+.4f}" for c in centers)
    ratio = f"{table['pooled']['mean']:.4f} / {table['unet-pooled']['mean']:.4f}"
    return dice_section(table, centers, digits=4).bullets(
        [
            f"pooled Privacy-SF above each center alone at every center: {beats} (pooled − alone: {gains})",
            f"pooled Privacy-SF over the pooled raw U-Net: {judged['pooled_over_unet_pooled']:.3f} ({ratio})",
        ]
    )


def bench_dice(root: Path) -> Markdown:
    """Test Dice, mean ± std over seeds, of every method the published suite ran on each dataset (a
    publication made of ``--only`` parts may leave some methods out: they get no column)."""
    (results,) = _load(root, "bench-dice")
    summary = accuracy_summary(results["rows"])
    datasets = results["settings"]["datasets"]
    methods = [m for m in BENCH_METHODS if any(key[1] == m for key in summary)]
    table = [
        [d, *(pm(summary[(d, m)]["dice"], 3) if (d, m) in summary else None for m in methods)]
        for d in datasets
    ]
    return Markdown().table(["dataset", *methods], table)


def bench_targets(root: Path) -> Markdown:
    (results,) = _load(root, "bench-targets")
    rows = results["rows"]
    return targets_table(rows, accuracy_summary(rows), results["settings"])


BLOCKS: dict[str, Callable[[Path], Markdown]] = {
    "privacy": privacy,
    "multicenter": multicenter,
    "bench-dice": bench_dice,
    "bench-targets": bench_targets,
}


def render(readme: str, root: Path = ROOT) -> str:
    """``readme`` with every generated block's body rewritten from the result files under ``root``."""
    found = [m["name"] for m in BLOCK.finditer(readme)]
    unknown, absent = set(found) - set(BLOCKS), set(BLOCKS) - set(found)
    if unknown or absent or len(found) != len(set(found)):
        raise ValueError(f"README blocks: unknown {sorted(unknown)}, absent {sorted(absent)}, found {found}")
    return BLOCK.sub(lambda m: f"{m[1]}\n{BLOCKS[m['name']](root).text()}\n{m[4]}", readme)


def stale_blocks(readme: str, root: Path = ROOT) -> list[str]:
    """Names of the blocks whose text differs from what the result files give."""
    fresh = {m["name"]: m["body"] for m in BLOCK.finditer(render(readme, root))}
    return [m["name"] for m in BLOCK.finditer(readme) if m["body"] != fresh[m["name"]]]


def main(argv: list[str]) -> int:
    path = ROOT / "README.md"
    text = path.read_text()
    if argv == ["--check"]:
        stale = stale_blocks(text)
        if stale:
            print(f"README.md blocks differ from the results: {', '.join(stale)}; run tools/readme_tables.py")
        return 1 if stale else 0
    if argv:
        raise SystemExit(__doc__)
    path.write_text(render(text))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
