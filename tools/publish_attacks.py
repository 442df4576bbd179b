"""Copy an attack-suite run's report, results and pictures (no checkpoints, no keys) into docs/privacy/.

    python tools/publish_attacks.py RUN_FOLDER [RUN_FOLDER ...]

Each run lands in ``docs/privacy/<dataset>/``: ``attacks.md`` (the attack table, targets and curve as
the suite wrote them), ``results.json``, ``config.json``, ``data.json`` and every PNG, so each figure
in docs/threat-model.md traces back to the run that produced it.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs" / "privacy"
KEPT = ("attacks.md", "results.json", "config.json", "data.json", "privacy_utility.png")


def publish(run: Path) -> Path:
    dataset = json.loads((run / "results.json").read_text())["dataset"]
    target = DOCS / dataset
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for name in KEPT:
        shutil.copy2(run / name, target / name)
    for picture in run.glob("*/attacks.png"):
        (target / picture.parent.name).mkdir()
        shutil.copy2(picture, target / picture.parent.name / picture.name)
    (target / "RUN").write_text(f"{run.name}\n")
    return target


if __name__ == "__main__":
    for folder in sys.argv[1:]:
        print(publish(Path(folder)))
