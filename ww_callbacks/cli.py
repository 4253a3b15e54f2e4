"""The ``ww-callbacks`` command line (also ``python -m ww_callbacks``).

Subcommands:

``ww-callbacks analyze PATH``
    Analyze the weights saved in ``PATH`` without any data and print the per-layer table and the summary.
    ``PATH`` may be a Lightning checkpoint (``.ckpt``), a torch state dict (``.pt``, ``.pth``, ``.bin``), a
    ``.safetensors`` file, a Keras model (``.keras``, legacy ``.h5``), or a model directory saved by
    ``save_pretrained`` (sharded or not; read one layer at a time); files with another suffix are recognized
    by their content. Options:

    * ``--json [FILE]`` / ``--csv [FILE]``: also write every per-layer column (JSON: plus the summary) to
      ``FILE``; without ``FILE`` (or with ``-``) the JSON or CSV replaces the table on stdout. NaN is written
      as ``null`` in JSON and ``nan`` in CSV.
    * ``--plots DIR``: one ESD plot per analyzed layer, ``DIR/<layer>.esd.png``.
    * ``--layers SPEC``: comma-separated names, globs, or kinds (``dense``, ``conv2d``...); a leading ``-``
      excludes (write ``--layers=-fc3`` so the shell and argparse keep the dash).
    * ``--no-randomize``, ``--mp-fit``, ``--seed``, ``--min-evals``, ``--max-evals``: as in
      `ww_callbacks.analyze`.
    * ``--progress {auto,always,never}``: a bar over layers on stderr; ``auto`` shows it only on a terminal
      and only once the analysis has run for a moment.

``ww-callbacks sweep CHECKPOINT... [--history FILE] [--rule RULE] [--jobs N | --scheduler ADDRESS]``
    Analyze a series of checkpoints into a history file (see `ww_callbacks.sweep`); ``--rule`` prints where a
    stopping rule (written in the syntax of `ww_callbacks.sweep.rules`) would have stopped. Exit status 1 when a
    checkpoint could not be read (the others are analyzed).

``ww-callbacks history HISTORY.jsonl``
    Print the summary metrics epoch by epoch from a history file written by the callbacks; ``--plot FILE``
    saves the metric curves, ``--heatmap FILE`` the per-layer alpha heatmap.

A file that cannot be read, is not a model, or holds no analyzable layer ends with a one-line error on stderr
and exit code 2 (as do usage errors); success is 0.

Example::

    $ ww-callbacks --version
    ww-callbacks 0.1.0
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from ._util import first_line, jsonable
from .analysis import analyze
from .io import WeightsFileError, load_weights, open_layers
from .layers import LayerWeights
from .spectral.catalog import METRICS
from .spectral.options import AnalysisOptions
from .spectral.report import LayerResult, SpectralReport
from .spectral.text import csv_text, format_report, format_table, format_value

__all__ = ["CLIError", "build_parser", "format_report", "format_table", "load_weights", "main"]

log = logging.getLogger(__name__)

PROG = "ww-callbacks"

#: Exit code for a bad input file or a usage error (argparse uses 2 as well).
EXIT_BAD_INPUT = 2

SWEEP_KINDS = ".ckpt, .pt, .pth, .bin, .safetensors, .keras files and model directories"

#: Summary metrics shown by ``history`` (those present in the file are used); see the metric table.
HISTORY_METRICS = tuple(name for name, info in METRICS.items() if info.history_table)


class CLIError(Exception):
    """A user-facing error: printed as one line on stderr, exit code 2."""


def _emit(text: str, destination: str) -> None:
    if destination == "-":
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        return
    path = Path(destination)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
    except OSError as exc:
        raise CLIError(f"cannot write {path}: {exc.strerror or exc}") from exc


# --------------------------------------------------------------------------------------------------- analyze


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


def _parse_layers(spec: str | None) -> list[str] | None:
    if not spec:
        return None
    items = [s.strip() for s in spec.split(",") if s.strip()]
    return items or None


def _analyze_path(args: argparse.Namespace) -> SpectralReport:
    path = Path(args.path)
    try:
        source = open_layers(path, layers=_parse_layers(args.layers))
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
    from .plots import plot_esd  # matplotlib itself is imported when the first figure is drawn

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


def _cmd_analyze(args: argparse.Namespace) -> int:
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
        _emit(json.dumps(jsonable(payload), indent=2, allow_nan=False), args.json)
    if args.csv is not None:
        _emit(csv_text(report.to_rows()), args.csv)
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


# --------------------------------------------------------------------------------------------------- history


def _cmd_history(args: argparse.Namespace) -> int:
    path = Path(args.path)
    if not path.exists():
        raise CLIError(f"{path}: no such file")
    if path.is_dir():
        raise CLIError(f"{path}: is a directory, expected a ww_history.jsonl file")
    from .sinks.history import load_history, summarize_history

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
        _emit(json.dumps(jsonable(epochs), indent=2, allow_nan=False), args.json)
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
            _save_history_plot(rows, target, kind, args.metrics)
            print(f"{kind} plot written to {target}", file=stream)
    return 0


def _isnan(value: Any) -> bool:
    try:
        return math.isnan(float(value))
    except (TypeError, ValueError):
        return True


def _save_history_plot(rows: Any, target: str, kind: str, metrics: Sequence[str] | None) -> None:
    from .plots import plot_alpha_heatmap, plot_history  # matplotlib is imported when drawing

    path = Path(target)
    try:
        figure = plot_history(rows, metrics=metrics) if kind == "history" else plot_alpha_heatmap(rows)
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=100)
    except ImportError as exc:
        raise CLIError(f"plots need matplotlib: pip install matplotlib ({first_line(exc)})") from exc
    except (KeyError, ValueError) as exc:  # e.g. --metrics names a metric the file does not have
        raise CLIError(f"cannot plot the {kind} ({first_line(exc)})") from exc
    except OSError as exc:
        raise CLIError(f"cannot write {path}: {exc.strerror or exc}") from exc


# --------------------------------------------------------------------------------------------------- sweep


def _cmd_sweep(args: argparse.Namespace) -> int:
    from .spectral.catalog import metric_available, missing_option
    from .sweep import find_checkpoints, load_history, parse_rule, replay_rule, run_sweep
    from .sweep.rules import monitored_metrics
    from .sweep.runner import SweepWarning

    rule = None
    if args.rule is not None:
        try:
            rule = parse_rule(args.rule)
        except ValueError as exc:
            raise CLIError(first_line(exc)) from exc
        options = {"randomize": args.randomize, "mp_fit": args.mp_fit}
        for metric in monitored_metrics(rule):
            if not metric_available(metric, options):
                raise CLIError(f"{args.rule} monitors {metric}, which needs {missing_option(metric)}")
    if args.jobs is not None and args.jobs < 1:
        raise CLIError(f"--jobs must be at least 1, got {args.jobs}")
    if not find_checkpoints(args.paths) and not Path(args.history).exists():
        raise CLIError(f"no checkpoints in {', '.join(args.paths)} (looked for {SWEEP_KINDS})")

    def report(outcome: Any) -> None:
        if outcome.ok:
            summary = SpectralReport.from_dict(outcome.report).summary
            values = ", ".join(
                f"{m} {format_value(summary[m])}" for m in ("alpha", "rand_distance") if m in summary
            )
            print(
                f"epoch {outcome.epoch:>4}  step {outcome.step:>7}  {outcome.path}: "
                f"{len(outcome.report['layers'])} layers, {values} ({outcome.elapsed:.1f} s)",
                flush=True,
            )
        else:
            print(f"{PROG}: skipped {outcome.error}", file=sys.stderr, flush=True)

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", SweepWarning)
            result = run_sweep(
                args.paths,
                args.history,
                jobs=args.jobs,
                scheduler=args.scheduler,
                seed=args.seed,
                layers=_parse_layers(args.layers),
                on_outcome=report,
                randomize=args.randomize,
                mp_fit=args.mp_fit,
                traps=args.traps,
                min_evals=args.min_evals,
                max_evals=args.max_evals,
            )
    except RuntimeError as exc:  # no Dask, unreachable scheduler
        raise CLIError(first_line(exc)) from exc
    except ValueError as exc:  # an unreadable existing history file
        raise CLIError(first_line(exc)) from exc
    for warning in caught:
        if issubclass(warning.category, SweepWarning):
            print(f"{PROG}: warning: {warning.message}", file=sys.stderr)
    print(
        f"\n{len(result.analyzed)} checkpoints analyzed, {len(result.skipped)} already in the history, "
        f"{len(result.failed)} unreadable, in {result.elapsed:.1f} s; history: {result.history}"
    )
    if rule is not None:
        try:
            replay = replay_rule(rule, load_history(result.history, as_pandas=False))
        except (ValueError, KeyError, OSError) as exc:
            raise CLIError(f"cannot replay {args.rule}: {first_line(exc)}") from exc
        print(replay.describe())
    return 1 if result.failed else 0


# --------------------------------------------------------------------------------------------------- parser


def _output_option(parser: argparse.ArgumentParser, flag: str, what: str) -> None:
    parser.add_argument(
        flag,
        nargs="?",
        const="-",
        default=None,
        metavar="FILE",
        help=f"write {what} to FILE; without FILE (or '-') print it to stdout instead of the table",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``ww-callbacks`` (exposed for documentation tools and tests).

    Example:
        >>> build_parser().parse_args(["analyze", "model.ckpt", "--no-randomize"]).randomize
        False
    """
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Data-free spectral diagnostics (WeightWatcher metrics) of saved models and training histories.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages to stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_analyze_parser(sub)
    _add_history_parser(sub)
    _add_sweep_parser(sub)
    return parser


def _add_analyze_parser(sub: Any) -> None:
    p = sub.add_parser(
        "analyze",
        help="analyze a saved model (.ckpt, .pt/.pth, .safetensors, .keras, a save_pretrained directory)",
        description="Analyze the weights in PATH and print the per-layer table and the summary.",
    )
    p.add_argument(
        "path", metavar="PATH", help="a .ckpt, .pt/.pth, .safetensors or .keras file, or a model directory"
    )
    _output_option(p, "--json", "the report as JSON (per-layer columns, summary, options)")
    _output_option(p, "--csv", "the per-layer columns as CSV")
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
    p.set_defaults(func=_cmd_analyze)


def _add_history_parser(sub: Any) -> None:
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
    _output_option(h, "--json", "the per-epoch summary as JSON")
    h.set_defaults(func=_cmd_history)


def _add_sweep_parser(sub: Any) -> None:
    defaults = AnalysisOptions()
    w = sub.add_parser(
        "sweep",
        help="analyze a series of checkpoints into a history file",
        description=(
            "Analyze checkpoints (Lightning .ckpt, Hugging Face checkpoint-* directories, .keras files, state dicts) "
            "into the JSON-lines history the callbacks write, each with the epoch and step it was saved at. "
            "Re-running into the same history skips the checkpoints already in it; an unreadable checkpoint is "
            "reported and skipped (exit status 1)."
        ),
    )
    w.add_argument(
        "paths", nargs="+", metavar="CHECKPOINT", help="checkpoint files or directories holding them"
    )
    w.add_argument(
        "--history",
        "-o",
        default="ww_history.jsonl",
        metavar="FILE",
        help="the history file to append to (default: ww_history.jsonl)",
    )
    w.add_argument(
        "--rule",
        metavar="RULE",
        help="print where this stopping rule would have stopped, e.g. \"Plateau('rand_distance', mode='max', "
        'patience=3)" (the rule classes of ww_callbacks.stopping with literal arguments)',
    )
    w.add_argument("--jobs", "-j", type=int, default=None, help="worker processes (default: the CPU count)")
    w.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="run on this Dask distributed scheduler (tcp://host:8786) instead",
    )
    w.add_argument("--layers", metavar="SPEC", help="as for analyze")
    w.add_argument("--no-randomize", dest="randomize", action="store_false", help="skip rand_distance")
    w.add_argument("--mp-fit", action="store_true", help="also fit the Marchenko-Pastur bulk")
    w.add_argument(
        "--traps",
        action="store_true",
        help="also count correlation traps (off by default, as in the callbacks)",
    )
    w.add_argument("--seed", type=int, default=0, help="epoch e uses the shuffles of (seed, e) (default: 0)")
    w.add_argument("--min-evals", type=int, default=defaults.min_evals, help="as for analyze")
    w.add_argument("--max-evals", type=int, default=defaults.max_evals, help="as for analyze")
    w.set_defaults(func=_cmd_sweep)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``) and return the exit code.

    Example (it prints to stderr, which a doctest cannot show)::

        main(["analyze", "missing.pt"])   # prints "ww-callbacks: error: missing.pt: no such file", returns 2
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_BAD_INPUT
    if args.verbose:
        logging.basicConfig(level=logging.DEBUG, format="%(name)s: %(message)s")
    try:
        return int(args.func(args))
    except (CLIError, WeightsFileError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
