"""``ww-callbacks sweep CHECKPOINT...``: a series of checkpoints into a history file, and a rule replayed on it.

Example:
    >>> import argparse
    >>> sub = argparse.ArgumentParser().add_subparsers()
    >>> add_parser(sub).parse_args(["ckpts/", "--jobs", "2"]).jobs
    2
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any

from .._util import first_line
from ..spectral.options import AnalysisOptions
from ..spectral.report import SpectralReport
from ..spectral.text import format_value
from ._common import PROG, CLIError, parse_layers

__all__ = ["SWEEP_KINDS", "add_parser", "run"]

SWEEP_KINDS = ".ckpt, .pt, .pth, .bin, .safetensors, .keras files and model directories"


def run(args: argparse.Namespace) -> int:
    from ..spectral.catalog import metric_available, missing_option
    from ..sweep import find_checkpoints, load_history, parse_rule, replay_rule, run_sweep
    from ..sweep.rules import monitored_metrics
    from ..sweep.runner import SweepWarning

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
                layers=parse_layers(args.layers),
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


def add_parser(sub: Any) -> argparse.ArgumentParser:
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
    w.set_defaults(func=run)
    return w
