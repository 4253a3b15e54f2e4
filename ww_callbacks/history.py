"""The history format: one row per layer per analysis, as the callbacks and the sweep write it.

This module knows the rows and nothing about where they go: `history_rows` turns a report into rows,
`read_history_rows` / `load_history` read a ``ww_history.jsonl`` file back, `summarize_history` averages rows into
one summary per analysis and `history_reports` rebuilds `SpectralReport` objects from rows (what the stopping
rules' replay and the sweep's ``--rule`` feed to a rule). The sink that writes the file during training is
`ww_callbacks.sinks.history.HistoryWriter`; plots, stopping and the CLI read through this module.

Example:
    >>> rows = [{"epoch": 0, "step": 9, "layer": "fc", "status": "success", "alpha": 3.0}]
    >>> summarize_history(rows, metrics=["alpha"])[0]["alpha"]
    3.0
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ._util import finite_or_none, jsonable
from .spectral.report import STATUS_NON_FINITE, STATUS_SUCCESS, SUMMARY_METRICS, LayerResult, SpectralReport

__all__ = [
    "INDEX_KEYS",
    "as_records",
    "history_reports",
    "history_rows",
    "is_per_layer",
    "load_history",
    "read_history_rows",
    "summarize_history",
    "uses_steps",
]

log = logging.getLogger(__name__)

PathLike = str | os.PathLike

#: Keys every history line starts with; the rest are `LayerResult.to_row()` columns.
INDEX_KEYS = ("epoch", "step", "layer")

# Columns whose null means NaN (JSON has no NaN); derived from LayerResult so new metrics are covered.
FLOAT_COLUMNS = frozenset(f.name for f in dataclasses.fields(LayerResult) if f.type in ("float", float))


def history_rows(
    report: SpectralReport, *, epoch: int, step: int, extra: Mapping[str, Any] | None = None
) -> list[dict[str, Any]]:
    """The history lines of one analysis, as dicts (one per layer), before JSON encoding.

    ``extra`` columns (e.g. ``checkpoint``, which ``ww-callbacks sweep`` records) follow the index keys.

    Example:
        >>> import numpy as np, ww_callbacks
        >>> report = ww_callbacks.analyze({"fc.weight": np.ones((30, 20))})
        >>> row = history_rows(report, epoch=2, step=40)[0]
        >>> row["epoch"], row["layer"], row["status"] != ""
        (2, 'fc', True)
    """
    rows = []
    for layer in report.layers:
        row: dict[str, Any] = {"epoch": int(epoch), "step": int(step), "layer": layer.longname}
        for key, value in (extra or {}).items():
            row.setdefault(key, jsonable(value))
        for key, value in layer.to_row().items():
            row.setdefault(key, jsonable(value))
        rows.append(row)
    return rows


def _decode_row(row: dict[str, Any]) -> dict[str, Any]:
    for key, value in row.items():
        if value is None and key in FLOAT_COLUMNS:
            row[key] = math.nan
    return row


def read_history_rows(path: PathLike) -> list[dict[str, Any]]:
    """Read the per-layer rows of a history file as dicts, in file order (no de-duplication).

    ``null`` in a float column comes back as NaN. An incomplete last line (a write cut short) is skipped; an
    unreadable line anywhere else raises ``ValueError`` naming the line.

    Example:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "h.jsonl")
        >>> _ = open(path, "w").write('{"epoch": 0, "step": 1, "layer": "fc", "alpha": null}\\n{"epo')
        >>> rows = read_history_rows(path)
        >>> len(rows), rows[0]["alpha"]
        (1, nan)
    """
    path = Path(path)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    lines = text.split("\n")
    last = len(lines) - 1  # the text after the final newline: "" for a complete file
    rows = []
    for number, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == last:
                log.warning("%s: skipping an incomplete last line (%d characters)", path, len(line))
                continue
            raise ValueError(f"{path}:{number + 1}: not a JSON line ({exc.msg})") from exc
        if not isinstance(row, dict) or not all(k in row for k in INDEX_KEYS):
            raise ValueError(f"{path}:{number + 1}: not a history line (needs keys {', '.join(INDEX_KEYS)})")
        rows.append(_decode_row(row))
    return rows


def _latest_per_analysis_and_layer(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep the last row written for each (epoch, step, layer), ordered by epoch and step, then original layer
    order.

    A run resumed from an older checkpoint re-analyzes epochs (steps) that are already in the file; the newer
    lines win. Analyses at different steps of one epoch (a step schedule) are all kept.
    """
    latest: dict[tuple[Any, Any, Any], tuple[int, dict[str, Any]]] = {}
    for index, row in enumerate(rows):
        key = (row["epoch"], row.get("step", 0), row["layer"])
        first_index = latest[key][0] if key in latest else index
        latest[key] = (first_index, row)
    ordered = sorted(latest.values(), key=lambda item: (item[1]["epoch"], item[1].get("step", 0), item[0]))
    return [row for _, row in ordered]


def load_history(path: PathLike, *, as_pandas: bool | None = None, dedupe: bool = True) -> Any:
    """Read a history file (the callbacks' ``ww_history.jsonl``, a sweep's history).

    Args:
        path: the JSON-lines file.
        as_pandas: True for a ``pandas.DataFrame``, False for a list of dicts, None (default) for a DataFrame
            when pandas is importable and a list otherwise.
        dedupe: keep only the last line written for each (epoch, step, layer), so epochs re-analyzed after a
            resume appear once (default True).

    Returns:
        One row per layer per analyzed epoch, sorted by epoch, with columns ``epoch``, ``step``, ``layer`` and
        every `LayerResult` column (NaN where the file has null).

    Example:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "history.jsonl")
        >>> _ = open(path, "w").write('{"epoch": 0, "step": 5, "layer": "fc", "alpha": 3.5}\\n')
        >>> df = load_history(path, as_pandas=True)
        >>> list(df.columns[:3]), len(df)
        (['epoch', 'step', 'layer'], 1)
    """
    rows = read_history_rows(path)
    if dedupe:
        rows = _latest_per_analysis_and_layer(rows)
    if as_pandas is False:
        return rows
    try:
        import pandas as pd
    except ImportError:
        if as_pandas:
            raise ImportError("load_history(as_pandas=True) needs pandas: pip install pandas") from None
        return rows
    return pd.DataFrame(rows)


def as_records(history: Any) -> list[dict[str, Any]]:
    """Rows as a list of dicts, from a list of mappings or a pandas DataFrame.

    Example:
        >>> as_records([{"epoch": 0, "alpha": 3.0}])
        [{'epoch': 0, 'alpha': 3.0}]
    """
    if hasattr(history, "to_dict") and hasattr(history, "columns"):
        return [dict(r) for r in history.to_dict("records")]
    if isinstance(history, Mapping):
        raise TypeError("expected a list of rows or a DataFrame, got a single mapping")
    return [dict(r) for r in history]


def is_per_layer(rows: Iterable[Mapping[str, Any]]) -> bool:
    """True when ``rows`` are per-layer history rows (they have a ``layer`` key) rather than epoch summaries."""
    return any("layer" in row for row in rows)


def uses_steps(rows: Sequence[Mapping[str, Any]]) -> bool:
    """True when the analyses of ``rows`` are told apart by their step rather than their epoch: a step schedule
    (several analyses in one epoch) or rows that carry no epoch at all.

    Example:
        >>> uses_steps([{"epoch": 0, "step": 3}, {"epoch": 0, "step": 7}])
        True
        >>> uses_steps([{"epoch": 0, "step": 9}, {"epoch": 1, "step": 19}])
        False
    """
    analyses = {(row.get("epoch"), row.get("step")) for row in rows}
    epochs = {epoch for epoch, _ in analyses}
    return len(analyses) > len(epochs) or epochs == {None}


def summarize_history(history: Any, *, metrics: Iterable[str] = SUMMARY_METRICS) -> list[dict[str, Any]]:
    """One summary per analysis (epoch and step) from per-layer history rows: the mean of each metric over the
    layers whose status is "success" (NaN where no such layer has a finite value), like `SpectralReport.summary`.

    Args:
        history: per-layer rows from `load_history` (list of dicts or DataFrame).
        metrics: the metrics to average (default `SUMMARY_METRICS`).

    Returns:
        A list sorted by epoch and step of dicts with ``epoch``, ``step``, ``num_layers``, ``num_summarized``,
        ``num_nonfinite_layers`` (layers whose weights held NaN/Inf) and one key per metric.

    Example:
        >>> rows = [
        ...     {"epoch": 0, "step": 9, "layer": "a", "status": "success", "alpha": 3.0},
        ...     {"epoch": 0, "step": 9, "layer": "b", "status": "success", "alpha": 5.0},
        ...     {"epoch": 0, "step": 9, "layer": "c", "status": "failed", "alpha": float("nan")},
        ... ]
        >>> s = summarize_history(rows, metrics=["alpha"])[0]
        >>> s["alpha"], s["num_layers"], s["num_summarized"]
        (4.0, 3, 2)
    """
    metrics = list(metrics)
    groups: dict[tuple[Any, int], list[dict[str, Any]]] = {}
    for row in as_records(history):
        groups.setdefault((row["epoch"], int(row.get("step", 0))), []).append(row)
    out = []
    for epoch, step in sorted(groups):
        rows = groups[(epoch, step)]
        ok = [r for r in rows if r.get("status", STATUS_SUCCESS) == STATUS_SUCCESS]
        summary: dict[str, Any] = {
            "epoch": epoch,
            "step": step,
            "num_layers": len(rows),
            "num_summarized": len(ok),
            "num_nonfinite_layers": sum(r.get("status") == STATUS_NON_FINITE for r in rows),
        }
        for metric in metrics:
            values = [v for v in (finite_or_none(r.get(metric)) for r in ok) if v is not None]
            summary[metric] = sum(values) / len(values) if values else math.nan
        out.append(summary)
    return out


# ------------------------------------------------------------------------------------------ reports from rows
class _ReplayReport(SpectralReport):
    """A report rebuilt from history rows; its summary is computed once (replays read it many times)."""

    step: int | None = None  # the training step the analysis belongs to (history rows' ``step``)

    @functools.cached_property
    def summary(self) -> dict[str, float]:  # type: ignore[override]
        return SpectralReport.summary.fget(self)  # type: ignore[attr-defined,no-any-return]


def _finite_any(rows: Sequence[Mapping[str, Any]], column: str) -> bool:
    for row in rows:
        value = row.get(column)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return True
    return False


def history_reports(history: Any) -> list[tuple[int, SpectralReport]]:
    """The spectral report of every analysis in a history: ``[(epoch, report), ...]`` sorted by epoch and step.

    ``history`` is a history file (the callbacks' ``ww_history.jsonl``), its per-layer rows (a list of dicts or
    a DataFrame, as `load_history` returns them; JSON ``null`` or None read as NaN), or already a sequence of
    ``(epoch, SpectralReport)`` pairs or of reports (epochs 0, 1, ...). An analysis is an (epoch, step) pair, so
    step schedules give several per epoch; rows repeated for an (epoch, step, layer) keep the last one, as in
    `load_history`. The reports' options (``randomize``, ``traps``, ``mp_fit``) are inferred from which columns
    hold values, and the per-layer eigenvalues are not in a history: a rule sees exactly the scalars the
    callback wrote. Each rebuilt report has a ``step`` attribute.

    Example:
        >>> rows = [{"epoch": 0, "step": 5, "layer": "fc", "alpha": 3.5, "status": "success"},
        ...         {"epoch": 1, "step": 9, "layer": "fc", "alpha": None, "status": "failed"}]
        >>> [(epoch, report.num_summarized) for epoch, report in history_reports(rows)]
        [(0, 1), (1, 0)]
    """
    if isinstance(history, (str, os.PathLike)):
        history = read_history_rows(history)
    elif hasattr(history, "to_dict") and hasattr(history, "columns"):  # a pandas DataFrame
        history = history.to_dict("records")
    items = list(history)
    if not items:
        return []
    if all(isinstance(item, SpectralReport) for item in items):
        return list(enumerate(items))
    if all(
        isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], SpectralReport) for item in items
    ):
        return sorted(((int(e), r) for e, r in items), key=lambda pair: pair[0])
    if not all(isinstance(item, Mapping) and "epoch" in item and "layer" in item for item in items):
        raise TypeError(
            "history must be a history file, per-layer rows with 'epoch' and 'layer', or SpectralReports"
        )
    return [(epoch, report) for (epoch, _), report in _reports_by_analysis(items).items()]


def _reports_by_analysis(items: list[Mapping[str, Any]]) -> dict[tuple[int, int], SpectralReport]:
    # One analysis per (epoch, step): step schedules analyze several times an epoch. Repeated rows of an
    # analysis (a resumed run) keep the last one, in the position of the first.
    latest: dict[tuple[int, int, str], tuple[int, Mapping[str, Any]]] = {}
    for index, row in enumerate(items):
        key = (int(row["epoch"]), int(row.get("step") or 0), str(row["layer"]))
        latest[key] = (latest[key][0] if key in latest else index, row)
    by_analysis: dict[tuple[int, int], list[tuple[int, Mapping[str, Any]]]] = {}
    for (epoch, step, _), pair in latest.items():
        by_analysis.setdefault((epoch, step), []).append(pair)
    traps = _finite_any(items, "num_traps")
    options = {
        "randomize": traps or _finite_any(items, "rand_distance"),
        "traps": traps,
        "mp_fit": _finite_any(items, "mp_softrank"),
    }
    out: dict[tuple[int, int], SpectralReport] = {}
    for epoch, step in sorted(by_analysis):
        ordered = sorted(by_analysis[(epoch, step)], key=lambda pair: pair[0])
        layers = [_layer_of(row, position) for position, (_, row) in enumerate(ordered)]
        report = _ReplayReport(layers=layers, options=dict(options))
        report.step = step
        out[(epoch, step)] = report
    return out


def _layer_of(row: Mapping[str, Any], position: int) -> LayerResult:
    values = dict(row)
    for column in FLOAT_COLUMNS:
        value = values.get(column)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            values[column] = math.nan
    values.setdefault("layer_id", position)
    values.setdefault("name", str(row["layer"]))
    values.setdefault("longname", str(row["layer"]))
    values.setdefault("layer_type", "")
    values.setdefault("N", 0)
    values.setdefault("M", 0)
    return LayerResult.from_dict(values)
