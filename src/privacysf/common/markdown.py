"""One way to write the project's Markdown: headings, paragraphs, lists, tables, figure links, banners.

Every report (fit, federate, attack suite, benchmarks) and the README's generated blocks are built
here, so a table, a "mean ± std" or a figure link looks the same everywhere and a report module only
says which numbers and which sections it shows. Blocks are separated by one blank line.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path

from privacysf.common.runs import write_text

Cell = str | int | float | None
MISSING = "–"
"""What a table shows where a row has no value (an absent entry or NaN), never ``nan`` or ``None``."""


def cell(value: Cell, spec: str = "") -> str:
    """A table cell: text as is, a number through its format ``spec``, a missing value as a dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    if isinstance(value, str):
        return value
    return format(value, spec)


def plus_minus(mean: float, std: float, digits: int) -> str:
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def interval(mean: float, low: float, high: float, digits: int) -> str:
    """A mean and its confidence interval, ``0.716 [0.690, 0.741]``."""
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


class Markdown:
    """A document built block by block; every method returns the builder so sections chain."""

    def __init__(self) -> None:
        self.blocks: list[str] = []

    def heading(self, text: str, level: int = 2) -> Markdown:
        self.blocks.append(f"{'#' * level} {text}")
        return self

    def paragraph(self, text: str) -> Markdown:
        self.blocks.append(text)
        return self

    def banner(self, text: str) -> Markdown:
        """A bold line that labels what follows or that the reader must not miss."""
        return self.paragraph(f"**{text}**")

    def bullets(self, items: Iterable[str]) -> Markdown:
        listed = [f"- {item}" for item in items]
        if listed:
            self.blocks.append("\n".join(listed))
        return self

    def table(
        self, header: Sequence[str], rows: Iterable[Sequence[Cell]], formats: Sequence[str] = ()
    ) -> Markdown:
        """A pipe table; ``formats[i]`` is the format spec of column ``i``'s numbers (text passes as is)."""
        specs = [*formats, *[""] * (len(header) - len(formats))]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in rows:
            if len(row) != len(header):
                raise ValueError(f"a table row has {len(row)} cells for {len(header)} columns: {row}")
            lines.append("| " + " | ".join(cell(v, s) for v, s in zip(row, specs, strict=True)) + " |")
        self.blocks.append("\n".join(lines))
        return self

    def figure(self, alt: str, path: str) -> Markdown:
        self.blocks.append(f"![{alt}]({path})")
        return self

    def extend(self, other: Markdown) -> Markdown:
        """Append another builder's blocks (a section written by a helper)."""
        self.blocks.extend(other.blocks)
        return self

    def text(self) -> str:
        return "\n\n".join(self.blocks) + "\n"

    def write(self, path: Path) -> None:
        """Write atomically, so a report is never seen half written."""
        write_text(path, self.text())
