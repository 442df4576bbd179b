"""README's result blocks are generated from the result files in docs/, never typed by hand."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("readme_tables", ROOT / "tools" / "readme_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _block(text: str, name: str) -> str:
    return re.search(rf"<!-- generated: {name} -->\n(.*?)<!-- end -->", text, re.DOTALL)[1]


def test_every_readme_block_is_what_the_result_files_give(tool):
    assert tool.stale_blocks(README) == [], "run `python tools/readme_tables.py` and commit README.md"
    assert tool.main(["--check"]) == 0


def test_a_hand_edited_number_is_caught_and_regenerating_restores_it(tool):
    body = _block(README, "bench-dice")
    first = re.search(r"\d\.\d{3}", body)[0]
    edited = README.replace(body, body.replace(first, f"{float(first) + 0.001:.3f}", 1))
    assert edited != README
    assert tool.stale_blocks(edited) == ["bench-dice"]
    assert tool.render(edited) == README


def test_the_blocks_quote_the_result_files(tool):
    """Figures recomputed here from the JSON files, not through the tool, are the ones README shows."""
    bench = json.loads((ROOT / "docs/benchmarks/results.json").read_text())
    dice = _block(README, "bench-dice")
    for dataset in bench["settings"]["datasets"]:
        task = [
            r["dice"]
            for r in bench["rows"]
            if r.get("method") == "Privacy-SF task" and r["dataset"] == dataset
        ]
        assert f"| {dataset} | {np.mean(task):.3f} ± {np.std(task, ddof=1):.3f} |" in dice
    final = json.loads((ROOT / tool.SOURCES["multicenter"][1]).read_text())
    unet = np.mean([final["test"]["unet-pooled"][c]["mean"]["dice"]["mean"] for c in final["centers"]])
    (row,) = [
        line for line in _block(README, "multicenter").splitlines() if line.startswith("| raw U-Net pooled")
    ]
    assert row.endswith(f" | {unet:.4f} |")


def test_a_missing_or_unknown_block_is_refused(tool):
    without = README.replace("<!-- generated: privacy -->", "<!-- removed -->")
    with pytest.raises(ValueError, match=r"absent \['privacy'\]"):
        tool.render(without)
    with pytest.raises(ValueError, match=r"unknown \['typo'\]"):
        tool.render(README + "\n<!-- generated: typo -->\n<!-- end -->\n")
