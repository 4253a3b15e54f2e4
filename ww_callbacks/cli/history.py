"""``ww-callbacks history FILE``: a history file's summaries analysis by analysis, and its plots.

Example:
    >>> import argparse
    >>> sub = argparse.ArgumentParser().add_subparsers()
    >>> add_parser(sub).parse_args(["ww_history.jsonl", "--plot", "h.png"]).plot
    'h.png'
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._util import first_line, jsonable
from ..history import load_history, summarize_history
from ..spectral.catalog import METRICS
from ..spectral.text import format_table, format_value
from ._common import CLIError, emit, output_option

__all__ = ["HISTORY_METRICS", "add_parser", "run"]

#: Summary metrics shown by ``history`` (those present in the file are used); see the metric table.
HISTORY_METRICS = tuple(name for name, info in METRICS.items() if info.history_table)


def run(args: argparse.Namespace) -> int:
    path = Path(args.path)
    if not path.exists():
        raise CLIError(f"{path}: no such file")
    if path.is_dir():
        raise CLIError(f"{path}: is a directory, expected a ww_history.jsonl file")
    try:
        rows = load_history(path, as_pandas=False)
        epochs = summarize_history(rows)
    except (ValueError, KeyError, TypeError, OSError, UnicodeDecodeError) as exc:
        raise CLIError(f"{path}: cannot read as a ww-callbacks history file ({first_line(exc)})") from exc
    if not epochs:
        raise CLIError(f"{path}: the history file holds no analysis")
    # Show the metrics that were computed (rand_distance needs randomize, mp_softrank needs mp_fit).
    metrics = [m for m in HISTORY_METRICS if any(not _isnan(e.get(m)) for e in epochs)]
    if args.json is not None:
        emit(json.dumps(jsonable(epochs), indent=2, allow_nan=False), args.json)
    if args.json != "-":
        print(format_table(epochs, ["epoch", "step", "num_summarized", *metrics]))
        if len(epochs) > 1:
            first, last = epochs[0], epochs[-1]
            print(f"\nfrom epoch {first['epoch']} to epoch {last['epoch']}:")
            width = max((len(m) for m in metrics), default=0)
            for m in metrics:
                change = last[m] - first[m]
                print(
                    f"  {m.ljust(width)}  {format_value(first[m])} -> {format_value(last[m])}  ({change:+.4f})"
                )
    stream = sys.stderr if args.json == "-" else sys.stdout
    for target, kind in ((args.plot, "history"), (args.heatmap, "alpha heatmap")):
        if target:
            _save_history_plot(rows, target, kind, args.metrics, args.x)
            print(f"{kind} plot written to {target}", file=stream)
    return 0


def _isnan(value: Any) -> bool:
    try:
        return math.isnan(float(value))
    except (TypeError, ValueError):
        return True


def _save_history_plot(rows: Any, target: str, kind: str, metrics: Sequence[str] | None, x: str) -> None:
    from ..plots import plot_alpha_heatmap, plot_history  # matplotlib is imported when drawing

    path = Path(target)
    try:
        if kind == "history":
            figure = plot_history(rows, metrics=metrics, x=x)
        else:
            figure = plot_alpha_heatmap(rows, x=x)
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=100)
    except ImportError as exc:
        raise CLIError(f"plots need matplotlib: pip install matplotlib ({first_line(exc)})") from exc
    except (KeyError, ValueError) as exc:  # e.g. --metrics names a metric the file does not have
        raise CLIError(f"cannot plot the {kind} ({first_line(exc)})") from exc
    except OSError as exc:
        raise CLIError(f"cannot write {path}: {exc.strerror or exc}") from exc


def add_parser(sub: Any) -> argparse.ArgumentParser:
    h = sub.add_parser(
        "history",
        help="summarize a ww_history.jsonl file and plot it",
        description="Print the summary metrics epoch by epoch from a history file written by the callbacks.",
    )
    h.add_argument("path", metavar="HISTORY", help="a ww_history.jsonl file")
    h.add_argument("--plot", metavar="FILE", help="save the metric curves to FILE (e.g. history.png)")
    h.add_argument("--heatmap", metavar="FILE", help="save the per-layer alpha heatmap to FILE")
    h.add_argument(
        "--metrics",
        type=lambda s: [m.strip() for m in s.split(",") if m.strip()],
        help="comma-separated summary metrics for --plot (default: alpha, alpha_weighted, log_spectral_norm, "
        "rand_distance)",
    )
    h.add_argument(
        "--x",
        choices=("auto", "epoch", "step"),
        default="auto",
        help="x axis of --plot and --heatmap (default auto: steps when an epoch holds several analyses, as a "
        "step schedule writes them; epochs otherwise)",
    )
    output_option(h, "--json", "the per-epoch summary as JSON")
    h.set_defaults(func=run)
    return h
