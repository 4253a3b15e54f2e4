"""What the command's modules share: the program name, the one-line error, output destinations, --layers.

Example:
    >>> parse_layers("fc*, -fc3"), parse_layers("")
    (['fc*', '-fc3'], None)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["EXIT_BAD_INPUT", "PROG", "CLIError", "emit", "output_option", "parse_layers"]

PROG = "ww-callbacks"

#: Exit code for a bad input file or a usage error (argparse uses 2 as well).
EXIT_BAD_INPUT = 2


class CLIError(Exception):
    """A user-facing error: printed as one line on stderr, exit code 2."""


def emit(text: str, destination: str) -> None:
    if destination == "-":
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        return
    path = Path(destination)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
    except OSError as exc:
        raise CLIError(f"cannot write {path}: {exc.strerror or exc}") from exc


def parse_layers(spec: str | None) -> list[str] | None:
    if not spec:
        return None
    items = [s.strip() for s in spec.split(",") if s.strip()]
    return items or None


def output_option(parser: argparse.ArgumentParser, flag: str, what: str) -> None:
    parser.add_argument(
        flag,
        nargs="?",
        const="-",
        default=None,
        metavar="FILE",
        help=f"write {what} to FILE; without FILE (or '-') print it to stdout instead of the table",
    )
