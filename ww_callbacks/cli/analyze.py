"""``ww-callbacks analyze PATH``: the per-layer table and summary of a saved model, as text, JSON or CSV.

Example:
    >>> import argparse
    >>> sub = argparse.ArgumentParser().add_subparsers()
    >>> add_parser(sub).parse_args(["model.ckpt", "--no-randomize"]).randomize
    False
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from .._util import first_line, jsonable
from ..analysis import analyze
from ..io import WeightsFileError, open_layers
from ..layers import LayerWeights
from ..spectral.options import AnalysisOptions
from ..spectral.report import LayerResult, SpectralReport
from ..spectral.text import csv_text, format_report
from ._common import CLIError, emit, output_option, parse_layers

__all__ = ["add_parser", "run"]


def _progress(items: Iterable[LayerWeights], mode: str, total: int | None = None) -> Iterable[LayerWeights]:
    if mode == "never":
        return items
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return items
    if mode == "auto" and not sys.stderr.isatty():
        return items
    # "auto" waits a moment so that quick analyses do not flash a bar.
    delay = 0.5 if mode == "auto" else 0.0
    return tqdm(items, desc="analyzing", unit="layer", total=total, file=sys.stderr, delay=delay, leave=False)


def _analyze_path(args: argparse.Namespace) -> SpectralReport:
    path = Path(args.path)
    try:
        source = open_layers(path, layers=parse_layers(args.layers))
    except (TypeError, ValueError) as exc:
        if isinstance(exc, WeightsFileError):
            raise
        raise CLIError(f"{path}: cannot find layers ({first_line(exc)})") from exc
    # One layer at a time so the bar can move (and a model directory is read layer by layer); a single
    # generator keeps the shuffles reproducible.
    rng = np.random.default_rng(args.seed)
    results: list[LayerResult] = []
    options: dict[str, Any] = {}
    start = time.perf_counter()
    for lw in _progress(source, args.progress, source.total):
        one = analyze(
            [lw],
            randomize=args.randomize,
            mp_fit=args.mp_fit,
            min_evals=args.min_evals,
            max_evals=args.max_evals,
            rng=rng,
            n_jobs=1,
        )
        del lw
        results.extend(one.layers)
        options = one.options
    if not results:
        what = "matching --layers " + args.layers if args.layers else "(dense, conv1d, conv2d or embedding)"
        raise CLIError(f"{path}: no analyzable layer {what}")
    return SpectralReport(layers=results, elapsed=time.perf_counter() - start, options=options)


def _safe_filename(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in name) or "layer"


def _save_esd_plots(report: SpectralReport, directory: str) -> list[Path]:
    from ..plots import plot_esd  # matplotlib itself is imported when the first figure is drawn

    out = Path(directory)
    saved = []
    try:
        out.mkdir(parents=True, exist_ok=True)
        for lr in report.layers:
            if lr.evals is None or len(lr.evals) == 0:
                continue  # skipped layers (too small, non-finite ...) have no ESD to draw
            target = out / f"{_safe_filename(lr.longname)}.esd.png"
            plot_esd(lr).savefig(target, dpi=100)
            saved.append(target)
    except ImportError as exc:
        raise CLIError(f"--plots needs matplotlib: pip install matplotlib ({first_line(exc)})") from exc
    except OSError as exc:
        raise CLIError(f"cannot write plots to {out}: {exc.strerror or exc}") from exc
    return saved


def run(args: argparse.Namespace) -> int:
    if args.json == "-" and args.csv == "-":
        raise CLIError("--json and --csv cannot both go to stdout; give one of them a FILE")
    report = _analyze_path(args)
    payload = None
    if args.json is not None:
        payload = {
            "source": str(args.path),
            "version": __version__,
            "summary": report.summary,
            "num_summarized": report.num_summarized,
            **report.to_dict(),
        }
        emit(json.dumps(jsonable(payload), indent=2, allow_nan=False), args.json)
    if args.csv is not None:
        emit(csv_text(report.to_rows()), args.csv)
    if "-" not in (args.json, args.csv):
        print(format_report(report))
        print(f"\nanalyzed {len(report)} layers of {args.path} in {report.elapsed:.2f} s")
    notes = []
    if args.json not in (None, "-"):
        notes.append(f"JSON written to {args.json}")
    if args.csv not in (None, "-"):
        notes.append(f"CSV written to {args.csv}")
    if args.plots:
        saved = _save_esd_plots(report, args.plots)
        notes.append(f"{len(saved)} ESD plots written to {args.plots}")
    # Notes go to stderr when stdout carries JSON/CSV, so that the output stays parseable.
    stream = sys.stderr if "-" in (args.json, args.csv) else sys.stdout
    for note in notes:
        print(note, file=stream)
    return 0


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "analyze",
        help="analyze a saved model (.ckpt, .pt/.pth, .safetensors, .keras, a save_pretrained directory)",
        description="Analyze the weights in PATH and print the per-layer table and the summary.",
    )
    p.add_argument(
        "path", metavar="PATH", help="a .ckpt, .pt/.pth, .safetensors or .keras file, or a model directory"
    )
    output_option(p, "--json", "the report as JSON (per-layer columns, summary, options)")
    output_option(p, "--csv", "the per-layer columns as CSV")
    p.add_argument("--plots", metavar="DIR", help="save one ESD plot per layer into DIR")
    p.add_argument(
        "--layers",
        metavar="SPEC",
        help="comma-separated layer names, globs or kinds to analyze; '-name' excludes (use --layers=-name)",
    )
    p.add_argument(
        "--no-randomize",
        dest="randomize",
        action="store_false",
        help="skip the randomized ESD (rand_distance)",
    )
    p.add_argument(
        "--mp-fit", action="store_true", help="also fit the Marchenko-Pastur bulk (num_spikes ...)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the weight shuffles (default: 0)")
    defaults = AnalysisOptions()
    p.add_argument(
        "--min-evals",
        type=int,
        default=defaults.min_evals,
        help=f"skip layers with fewer eigenvalues (default: {defaults.min_evals})",
    )
    p.add_argument(
        "--max-evals",
        type=int,
        default=defaults.max_evals,
        help=f"skip layers with more eigenvalues (default: {defaults.max_evals})",
    )
    p.add_argument(
        "--progress",
        choices=("auto", "always", "never"),
        default="auto",
        help="progress bar over layers on stderr (auto: only on a terminal, after a moment)",
    )
    p.set_defaults(func=run)
    return p
