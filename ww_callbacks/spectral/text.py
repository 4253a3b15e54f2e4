"""Plain-text renderings of a `SpectralReport`: the per-layer table, the summary, CSV.

What the command line prints and the examples show; no dependency beyond numpy.

Example:
    >>> print(format_table([{"name": "fc1", "alpha": 3.14159}], ["name", "alpha"]))
    name   alpha
    fc1   3.1416
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .catalog import metric_available
from .report import SpectralReport

__all__ = ["MP_COLUMNS", "TABLE_COLUMNS", "csv_text", "format_report", "format_table", "format_value"]

#: Columns of the per-layer table, in order; the mp_fit columns are added when they were computed.
TABLE_COLUMNS = (
    "layer_id",
    "name",
    "layer_type",
    "N",
    "M",
    "rf",
    "alpha",
    "alpha_weighted",
    "log_spectral_norm",
    "stable_rank",
    "rand_distance",
)
MP_COLUMNS = ("num_spikes", "mp_softrank")


def format_value(value: Any) -> str:
    """One table cell: ``-`` for None and NaN, 4 decimals (scientific notation when very small or large).

    Example:
        >>> format_value(3.14159), format_value(float("nan")), format_value(2e-6)
        ('3.1416', '-', '2.000e-06')
    """
    if value is None:
        return "-"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if math.isnan(value):
            return "-"
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.3e}"
        return f"{value:.4f}"
    return str(value)


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """Render ``rows`` as a plain-text table with one line per row; text left-aligned, numbers right-aligned.

    NaN and None print as ``-``; floats with 4 decimals (scientific notation when very small or large).

    Example:
        >>> print(format_table([{"name": "fc1", "alpha": 3.14159}], ["name", "alpha"]))
        name   alpha
        fc1   3.1416
    """
    cells = [[format_value(row.get(col)) for col in columns] for row in rows]
    numeric = [
        all(
            isinstance(row.get(col), (int, float, np.number)) and not isinstance(row.get(col), bool)
            for row in rows
        )
        for col in columns
    ]
    widths = [max([len(col)] + [len(r[i]) for r in cells]) for i, col in enumerate(columns)]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True)]
        return "  ".join(parts).rstrip()

    return "\n".join([line(list(columns))] + [line(r) for r in cells])


def format_report(report: SpectralReport, *, columns: Sequence[str] | None = None) -> str:
    """The per-layer table of ``report``, the reasons for skipped layers, and the summary, as text.

    Example:
        >>> import numpy as np, ww_callbacks
        >>> report = ww_callbacks.analyze({"fc.weight": np.random.default_rng(0).normal(size=(64, 32))}, seed=0)
        >>> print(format_report(report))  # doctest: +ELLIPSIS
        layer_id  name  layer_type ...
    """
    if columns is None:
        columns = list(TABLE_COLUMNS)
        if metric_available("mp_softrank", report.options):
            columns += list(MP_COLUMNS)
        if not metric_available("rand_distance", report.options):
            columns.remove("rand_distance")
        columns += ["status"]
        if any(lr.warning for lr in report.layers):
            columns += ["warning"]
    rows = report.to_rows()
    out = [format_table(rows, columns)]
    skipped = [lr for lr in report.layers if not lr.ok]
    if skipped:
        out.append("")
        out.extend(f"{lr.longname}: {lr.status}" + (f" ({lr.reason})" if lr.reason else "") for lr in skipped)
    out.append("")
    out.append(f"summary: mean over the {report.num_summarized} of {len(report)} layers whose fit succeeded")
    summary = report.summary
    width = max((len(k) for k in summary), default=0)
    out.extend(f"  {name.ljust(width)}  {format_value(value)}" for name, value in summary.items())
    return "\n".join(out)


def csv_text(rows: Sequence[Mapping[str, Any]]) -> str:
    """``rows`` as CSV text, with the union of their keys as columns (in order of appearance).

    Example:
        >>> print(csv_text([{"name": "fc1", "alpha": 3.5}]), end="")
        name,alpha
        fc1,3.5
    """
    buffer = io.StringIO()
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()
