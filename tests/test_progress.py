"""Progress and truth in reports: one line per trained network under --quiet, and the epochs
the report states are the epochs each network actually trained (early stopping included)."""

import json
import re

import torch

from privacysf.cli import main
from privacysf.common.training import fit
from privacysf.config import TrainConfig

EPOCHS = 8
"""With patience 1, enough epochs that some network has one without progress and stops early."""
TINY_FIT = [
    "--dataset",
    "phantom",
    "--size",
    "32",
    "--epochs",
    str(EPOCHS),
    "--quiet",
    "--set",
    "data.phantom_cases=12",
    "--set",
    "train.threads=1",
    "--set",
    "train.device=cpu",
    "--set",
    "train.patience=1",
    "--set",
    "codec.width=8",
    "--set",
    "mapper.width=16",
    "--set",
    "unet.channels=[8,16,32,64]",
]
STAGE_LINE = re.compile(
    r"^(?P<name>.+): (?P<epochs>\d+) epochs?(?P<early> \(early stop\))?, "
    r"best validation score (?P<score>-?[\d.]+) at epoch (?P<best>\d+), \d+ s$"
)
HISTORY_NAMES = {
    "center mask codec": "mask codec",
    "center image encoder (task)": "image encoder (task)",
    "server mapper": "server mapper (-MSE)",
    "raw U-Net": "raw U-Net",
}
REPORT_NAMES = {
    "center mask codec": "mask codec",
    "center image encoder (task)": "image encoder",
    "server mapper": "server mapper",
    "raw U-Net": "raw U-Net",
}


def fit_on_scores(scores: list[float], epochs: int):
    """A toy network trained with patience 1 whose validation returns ``scores`` in turn."""
    model = torch.nn.Linear(1, 1)
    values = iter(scores)
    return fit(
        model,
        lambda epoch: [torch.ones(2, 1)],
        lambda x: model(x).pow(2).mean(),
        lambda: next(values),
        TrainConfig(epochs=epochs, patience=1, progress=False),
        "toy",
    )


def test_early_stopping_is_counted_and_summarised(capsys):
    """Scores 0.5, 0.7, 0.6, 0.6 with patience 1 stop after 3 of 10 epochs, best at the 2nd."""
    result = fit_on_scores([0.5, 0.7, 0.6, 0.6], epochs=10)
    assert (result.epochs_trained, result.best_epoch, result.stopped_early) == (3, 1, True)
    outcome = {"epochs_run": 3, "stopped_early": True, "best_epoch": 1, "best_val_score": 0.7}
    assert result.outcome() == outcome
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    line = STAGE_LINE.match(lines[0])
    assert line and line["name"] == "toy" and line["early"]
    assert (line["epochs"], line["best"], line["score"]) == ("3", "2", "0.7000")


def test_patience_waits_for_a_first_improvement():
    """A run whose first score is never beaten (a rare class not yet found scores 0) trains to the
    last epoch; patience counts from the first epoch that beats the first."""
    flat = fit_on_scores([0.0] * 6, epochs=6)
    assert (flat.epochs_trained, flat.best_epoch, flat.stopped_early) == (6, 0, False)
    found = fit_on_scores([0.0, 0.0, 0.0, 0.4, 0.4, 0.4], epochs=6)
    assert (found.epochs_trained, found.best_epoch, found.stopped_early) == (5, 3, True)


def test_quiet_fit_prints_one_line_per_network_and_reports_the_epochs_run(tmp_path, capsys):
    assert main(["fit", *TINY_FIT, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    matches = [m for m in map(STAGE_LINE.match, out.splitlines()) if m]
    assert [m["name"] for m in matches] == list(HISTORY_NAMES)  # one line per network, in training order
    stages = {m["name"]: m for m in matches}
    (run_dir,) = tmp_path.iterdir()
    histories = json.loads((run_dir / "history.json").read_text())
    report = (run_dir / "report.md").read_text()
    assert f"at most {EPOCHS} epochs per network" in report
    rows = {cells[0]: cells[1:] for cells in _table_rows(report, "network")}
    for name, line in stages.items():
        history = histories[HISTORY_NAMES[name]]
        best = max(range(len(history)), key=lambda i: (history[i]["val_score"], -i))
        trained, stopped = str(len(history)), len(history) < EPOCHS
        assert (line["epochs"], bool(line["early"]), line["best"]) == (trained, stopped, str(best + 1))
        assert rows[REPORT_NAMES[name]][:3] == [trained, "yes" if stopped else "no", str(best + 1)]
    # patience 1: at least one network stops early, so "epochs run" differs from the setting
    assert any(line["early"] for line in stages.values())


def _table_rows(markdown: str, first_header: str) -> list[list[str]]:
    """The body rows of the Markdown table whose first column is ``first_header``."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows
