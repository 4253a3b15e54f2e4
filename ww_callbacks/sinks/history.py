"""The history sink: append each analysis to a JSON-lines file, one line per layer, as training goes.

`HistoryWriter` appends to the file (so a resumed run continues it). The format itself (the rows, reading them
back with `load_history`, summaries with `summarize_history`) lives in `ww_callbacks.history`; those names are
also importable from here.

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

import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..history import (
    INDEX_KEYS,
    as_records,
    history_rows,
    is_per_layer,
    load_history,
    read_history_rows,
    summarize_history,
)
from ..spectral.report import SpectralReport

__all__ = [
    "INDEX_KEYS",
    "HistoryWriter",
    "as_records",
    "history_rows",
    "is_per_layer",
    "load_history",
    "read_history_rows",
    "summarize_history",
]

PathLike = str | os.PathLike


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
