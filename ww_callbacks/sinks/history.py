"""A JSON-lines history of the analyses made during training: one line per layer per analyzed epoch.

`HistoryWriter` appends to the file (so a resumed run continues it); `load_history` reads it back, as a
pandas DataFrame when pandas is installed; `summarize_history` turns its per-layer rows into one summary per
epoch (means over the layers whose fit succeeded), which is what the plots and the CLI show.

Example:
    >>> import numpy as np, tempfile, os, ww_callbacks
    >>> from ww_callbacks.sinks.history import HistoryWriter, load_history, summarize_history
    >>> report = ww_callbacks.analyze({"fc.weight": np.random.default_rng(0).normal(size=(64, 32))}, seed=0)
    >>> path = os.path.join(tempfile.mkdtemp(), "ww_history.jsonl")
    >>> with HistoryWriter(path) as writer:
    ...     writer.write(report, epoch=0, step=10)
    >>> rows = load_history(path, as_pandas=False)
    >>> rows[0]["layer"], rows[0]["epoch"], rows[0]["step"]
    ('fc', 0, 10)
    >>> summarize_history(rows)[0]["num_summarized"]
    1
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .._util import finite_or_none, jsonable
from ..spectral.report import STATUS_NON_FINITE, STATUS_SUCCESS, SUMMARY_METRICS, LayerResult, SpectralReport

log = logging.getLogger(__name__)

PathLike = str | os.PathLike

#: Keys every history line starts with; the rest are `LayerResult.to_row()` columns.
INDEX_KEYS = ("epoch", "step", "layer")

# Columns whose null means NaN (JSON has no NaN); derived from LayerResult so new metrics are covered.
_FLOAT_COLUMNS = frozenset(f.name for f in dataclasses.fields(LayerResult) if f.type in ("float", float))


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


class HistoryWriter:
    """Append the per-layer results of each analysis to a JSON-lines file.

    Each `write` adds one line per layer (``epoch``, ``step``, ``layer`` = the layer's longname, then every
    column of `LayerResult.to_row`, ``status`` included; NaN and infinities as ``null``). All lines of one
    analysis go out in a single write followed by flush and ``os.fsync``, so a crash loses at most the analysis
    being written. With ``append=True`` (default) an existing file is continued, which is what a resumed run
    wants; a partial last line left by a crash is cut off first. ``append=False`` starts a new file at the
    first write. The file is opened at the first `write`, so a writer that never writes creates nothing.

    Example:
        >>> import numpy as np, tempfile, os, ww_callbacks
        >>> report = ww_callbacks.analyze({"fc.weight": np.random.default_rng(0).normal(size=(64, 32))}, seed=0)
        >>> path = os.path.join(tempfile.mkdtemp(), "history.jsonl")
        >>> with HistoryWriter(path) as writer:
        ...     writer.write(report, epoch=0, step=5)
        ...     writer.write(report, epoch=1, step=10)
        >>> [row["epoch"] for row in load_history(path, as_pandas=False)]
        [0, 1]
    """

    def __init__(self, path: PathLike, *, append: bool = True) -> None:
        self.path = Path(path)
        self.append = append
        self._file: Any = None

    def _open(self) -> Any:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.append and self.path.exists():
            _cut_partial_tail(self.path)
            return open(self.path, "a", encoding="utf-8")
        return open(self.path, "w", encoding="utf-8")

    def write(
        self, report: SpectralReport, *, epoch: int, step: int, extra: Mapping[str, Any] | None = None
    ) -> None:
        """Append one line per layer of ``report`` (plus the ``extra`` columns) and force them to disk."""
        lines = "".join(
            json.dumps(row, allow_nan=False, separators=(",", ":")) + "\n"
            for row in history_rows(report, epoch=epoch, step=step, extra=extra)
        )
        if not lines:
            return
        if self._file is None:
            self._file = self._open()
        self._file.write(lines)
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        """Close the file (a later `write` reopens it in append mode)."""
        if self._file is not None:
            self._file.close()
            self._file = None
            self.append = True

    def __enter__(self) -> HistoryWriter:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"HistoryWriter({str(self.path)!r}, append={self.append})"


def _cut_partial_tail(path: Path) -> None:
    """Drop an unterminated last line (a write interrupted by a crash) so appended lines stay parseable."""
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        # Scan back in chunks for the last newline; everything after it is the partial line.
        pos = size
        keep = 0
        while pos > 0:
            start = max(0, pos - 65536)
            f.seek(start)
            chunk = f.read(pos - start)
            idx = chunk.rfind(b"\n")
            if idx >= 0:
                keep = start + idx + 1
                break
            pos = start
        f.truncate(keep)
    warnings.warn(
        f"{path}: removed an incomplete last line (an interrupted write) before appending",
        RuntimeWarning,
        stacklevel=4,
    )


def _decode_row(row: dict[str, Any]) -> dict[str, Any]:
    for key, value in row.items():
        if value is None and key in _FLOAT_COLUMNS:
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


def _latest_per_epoch_and_layer(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
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
    """Read a history file written by `HistoryWriter` (the callbacks' ``ww_history.jsonl``).

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
        >>> import numpy as np, tempfile, os, ww_callbacks
        >>> report = ww_callbacks.analyze({"fc.weight": np.random.default_rng(0).normal(size=(64, 32))}, seed=0)
        >>> path = os.path.join(tempfile.mkdtemp(), "history.jsonl")
        >>> with HistoryWriter(path) as writer:
        ...     writer.write(report, epoch=0, step=5)
        >>> df = load_history(path, as_pandas=True)
        >>> list(df.columns[:3]), len(df)
        (['epoch', 'step', 'layer'], 1)
    """
    rows = read_history_rows(path)
    if dedupe:
        rows = _latest_per_epoch_and_layer(rows)
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


def summarize_history(history: Any, *, metrics: Iterable[str] = SUMMARY_METRICS) -> list[dict[str, Any]]:
    """One summary per analysis (epoch and step) from per-layer history rows: the mean of each metric over the layers
    whose status is "success" (NaN where no such layer has a finite value), like `SpectralReport.summary`.

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
