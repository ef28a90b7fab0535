"""Plain-text tables for the list commands: a header row, columns as wide as their widest cell (up to a cap,
longer cells end in '…'), an empty field shown as '-' (never 'None'), nothing after the last column."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TextIO


@dataclass(frozen=True)
class Styled:
    """A cell with an ANSI colour code (applied after padding, so it does not count toward the width)."""
    text: str
    code: str = ""


def text_of(value: Any) -> str:
    """A cell's text: '-' for nothing, one line."""
    if isinstance(value, Styled):
        value = value.text
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return " ".join(str(value).split())


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[:max(width - 1, 0)] + "…"


def print_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, caps: Mapping[str, int] | None = None,
                colour: bool = False, stream: TextIO | None = None) -> int:
    """Print the rows under the headers; `caps`: the widest a column may get (by header). Returns the number
    of rows printed."""
    out = stream or sys.stdout
    caps = caps or {}
    cells = [[(text_of(v), v.code if isinstance(v, Styled) else "") for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, (text, _) in enumerate(row):
            widths[i] = max(widths[i], min(len(text), caps.get(headers[i], 10**6)))
    last = len(headers) - 1

    def line(row: Sequence[tuple[str, str]]) -> str:
        parts = []
        for i, (text, code) in enumerate(row):
            text = _fit(text, widths[i])
            padded = text if i == last else text.ljust(widths[i])
            if colour and code and text != "-":
                padded = f"\x1b[{code}m{text}\x1b[0m" + padded[len(text):]
            parts.append(padded)
        return "  ".join(parts).rstrip()

    out.write(line([(h.upper(), "") for h in headers]) + "\n")
    for row in cells:
        out.write(line(row) + "\n")
    return len(cells)
