"""The Markdown builder every report is written with: cells, tables, blocks and the atomic write."""

from __future__ import annotations

import pytest

from privacysf.common.markdown import MISSING, Markdown, cell, interval, plus_minus


def test_cells_format_numbers_keep_text_and_show_missing_values_as_a_dash():
    assert cell(0.12345, ".3f") == "0.123"
    assert cell(8431) == "8431"
    assert cell("0.12345", ".3f") == "0.12345"
    assert cell(None, ".3f") == MISSING
    assert cell(float("nan"), ".3f") == MISSING
    assert plus_minus(0.7157, 0.0123, 3) == "0.716 ± 0.012"
    assert interval(0.7157, 0.7031, 0.7274, 2) == "0.72 [0.70, 0.73]"


def test_table_applies_each_columns_format_and_refuses_a_ragged_row():
    text = (
        Markdown()
        .table(["setting", "Dice", "bytes"], [["a", 0.91234, 8431], ["b", None, 12]], ["", ".2f"])
        .text()
    )
    assert text == "| setting | Dice | bytes |\n|---|---|---|\n| a | 0.91 | 8431 |\n| b | – | 12 |\n"
    with pytest.raises(ValueError, match="2 cells for 3 columns"):
        Markdown().table(["a", "b", "c"], [[1, 2]])


def test_blocks_are_separated_by_one_blank_line_and_empty_lists_add_nothing(tmp_path):
    doc = (
        Markdown()
        .heading("Run", 1)
        .paragraph("Status: finished.")
        .bullets([])
        .extend(Markdown().banner("Partial run").bullets(["seed 0", "seed 1"]))
        .figure("curves", "figures/curves.png")
    )
    expected = (
        "# Run\n\nStatus: finished.\n\n**Partial run**\n\n"
        "- seed 0\n- seed 1\n\n![curves](figures/curves.png)\n"
    )
    assert doc.text() == expected
    doc.write(tmp_path / "report.md")
    assert (tmp_path / "report.md").read_text() == expected
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]  # no temporary file left behind
