"""Copy a ``privacysf federate`` run's report, metrics, config and pictures into docs/runs/.

    python tools/publish_federate.py RUN_FOLDER

No checkpoint, key, code bundle or prediction is copied: only ``config.json``, ``data.json``,
``metrics.json``, ``report.md`` and ``figures/``. The report's tables replace what follows the
``<!-- BRAIN-3C -->`` marker's paragraph in docs/multicenter.md when the run is a brain-3c run, so the
table there is always the one the run wrote. ``.gitignore``'s ``runs/`` also matches ``docs/runs/``:
commit the copy with ``git add -f``.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"
KEPT = ("config.json", "data.json", "metrics.json", "report.md")
MARKER = "<!-- BRAIN-3C -->"
END = "## Tests"


def publish(run: Path) -> Path:
    target = DOCS / "runs" / run.name
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for name in KEPT:
        shutil.copy2(run / name, target / name)
    shutil.copytree(run / "figures", target / "figures")
    if json.loads((run / "metrics.json").read_text())["dataset"] == "brain-3c":
        page = DOCS / "multicenter.md"
        text = page.read_text()
        head, _, rest = text.partition(MARKER)
        command, _, _ = rest.strip("\n").partition("\n\n")
        tables = (run / "report.md").read_text().split("\n", 2)[2].strip()
        body = f"{command}\n\nRun folder: `docs/runs/{run.name}/`.\n\n{tables}\n"
        page.write_text(f"{head}{MARKER}\n{body}\n{END}{rest.partition(END)[2]}")
    return target


if __name__ == "__main__":
    for folder in sys.argv[1:]:
        print(publish(Path(folder)))
