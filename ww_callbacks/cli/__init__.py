"""The ``ww-callbacks`` command line (also ``python -m ww_callbacks``): one module per command, its parser beside it.

Subcommands:

``ww-callbacks analyze PATH`` (`ww_callbacks.cli.analyze`)
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
(`ww_callbacks.cli.sweep`)
    Analyze a series of checkpoints into a history file (see `ww_callbacks.sweep`); ``--rule`` prints where a
    stopping rule (written in the syntax of `ww_callbacks.sweep.rules`) would have stopped. Exit status 1 when a
    checkpoint could not be read (the others are analyzed).

``ww-callbacks history HISTORY.jsonl`` (`ww_callbacks.cli.history`)
    Print the summary metrics analysis by analysis from a history file written by the callbacks; ``--plot FILE``
    saves the metric curves, ``--heatmap FILE`` the per-layer alpha heatmap.

A file that cannot be read, is not a model, or holds no analyzable layer ends with a one-line error on stderr
and exit code 2 (as do usage errors); success is 0.

Example::

    $ ww-callbacks --version
    ww-callbacks 0.1.0
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from .. import __version__
from ..io import WeightsFileError, load_weights
from ..spectral.text import format_report, format_table
from . import analyze, history, sweep
from ._common import EXIT_BAD_INPUT, PROG, CLIError
from .history import HISTORY_METRICS

__all__ = [
    "HISTORY_METRICS",
    "CLIError",
    "build_parser",
    "format_report",
    "format_table",
    "load_weights",
    "main",
]


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
    for command in (analyze, history, sweep):
        command.add_parser(sub)
    return parser


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
