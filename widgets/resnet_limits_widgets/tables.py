"""Tables that a student reads: named columns with units, intervals as [low, high], rounded numbers.

A ``Column`` maps a column of a library DataFrame to a header and a format. A missing value
(None or NaN) is shown as the column's ``missing`` text, and a table that shows one prints a
note under it that explains the text, so no cell reads "NaN".
"""

from __future__ import annotations

import dataclasses
import html
import math
from collections.abc import Callable, Sequence
from fractions import Fraction

import pandas as pd

TABLE_STYLE = "border-collapse:collapse; margin:4px 0 10px 0"
CELL_STYLE = "padding:2px 10px; text-align:{align}; border-bottom:1px solid #e0e0e0"
HEADER_STYLE = "padding:2px 10px; text-align:{align}; border-bottom:1px solid #999; font-weight:600"


def is_missing(value) -> bool:
    """Return True for None and for a float NaN."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def significant(digits: int = 3) -> Callable[[float], str]:
    """Return a formatter that rounds to ``digits`` significant digits."""
    return lambda value: f"{float(value):.{digits}g}"


def integer(value) -> str:
    """Format an integer with thousands separators."""
    return f"{int(value):,}"


def fraction(value) -> str:
    """Format an exponent as a decimal and, when it is a simple fraction, that fraction (0.167 = 1/6)."""
    value = float(value)
    simple = Fraction(value).limit_denominator(12)
    decimal = f"{value:.3g}"
    if abs(float(simple) - value) < 1e-9 and simple.denominator > 1:
        return f"{decimal} = {simple.numerator}/{simple.denominator}"
    return decimal


def text(value) -> str:
    """Format any value with ``str``."""
    return str(value)


@dataclasses.dataclass(frozen=True)
class Column:
    """One shown column: the source column(s) of the frame, the header and the format.

    ``source`` is one column name, or a pair (low, high) of columns shown as the interval
    [low, high]. ``missing`` replaces a missing value, or an interval with a missing end.
    """

    source: str | tuple[str, str]
    header: str
    format: Callable[[object], str] = significant()
    missing: str = "–"

    @property
    def align(self) -> str:
        """Return "left" for a text column and "right" for numbers, so that digits line up."""
        return "left" if self.format is text else "right"

    def cell(self, row: pd.Series) -> tuple[str, bool]:
        """Return the cell's text and whether it shows ``missing``."""
        if isinstance(self.source, tuple):
            low, high = (row.get(name) for name in self.source)
            if is_missing(low) or is_missing(high):
                return self.missing, True
            return f"[{self.format(low)}, {self.format(high)}]", False
        value = row.get(self.source)
        if is_missing(value):
            return self.missing, True
        return self.format(value), False


def readable_table(frame: pd.DataFrame, columns: Sequence[Column], caption: str = "",
                   missing_note: str = "") -> str:
    """Return ``frame`` as an HTML table of ``columns``, with a caption above and notes below.

    ``missing_note`` is printed under the table when some cell shows a column's ``missing`` text,
    to say what that text means.
    """
    header = "".join(f'<th style="{HEADER_STYLE.format(align=column.align)}">{html.escape(column.header)}</th>'
                     for column in columns)
    body = []
    any_missing = False
    for _, row in frame.iterrows():
        cells = []
        for column in columns:
            value, missing = column.cell(row)
            any_missing = any_missing or missing
            cells.append(f'<td style="{CELL_STYLE.format(align=column.align)}">{html.escape(value)}</td>')
        body.append(f"<tr>{''.join(cells)}</tr>")
    caption_html = f"<p style='color:#555; margin:6px 0 2px 0'>{html.escape(caption)}</p>" if caption else ""
    note_html = (f"<p style='color:#555; font-size:12px; margin:0 0 8px 0'>{html.escape(missing_note)}</p>"
                 if any_missing and missing_note else "")
    return (f"<div style='font-size:13px'>{caption_html}<table style=\"{TABLE_STYLE}\"><tr>{header}</tr>"
            f"{''.join(body)}</table>{note_html}</div>")
