"""The ``ww-callbacks`` command line (also ``python -m ww_callbacks``).

Subcommands:

``ww-callbacks analyze PATH``
    Analyze the weights saved in ``PATH`` without any data and print the per-layer table and the summary.
    ``PATH`` may be a Lightning checkpoint (``.ckpt``), a torch state dict (``.pt``, ``.pth``, ``.bin``), a
    ``.safetensors`` file or a Keras model (``.keras``, legacy ``.h5``); files with another suffix are
    recognized by their content. Options:

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
import csv
import io
import json
import logging
import math
import os
import pickle
import sys
import time
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .analysis import analyze
from .layers import LayerWeights, snapshot
from .spectral.report import LayerResult, SpectralReport

log = logging.getLogger(__name__)

PROG = "ww-callbacks"

#: Exit code for a bad input file or a usage error (argparse uses 2 as well).
EXIT_BAD_INPUT = 2

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

#: Summary metrics shown by ``history`` (those present in the file are used).
HISTORY_METRICS = (
    "alpha",
    "alpha_weighted",
    "log_spectral_norm",
    "stable_rank",
    "rand_distance",
    "mp_softrank",
)

_TORCH_SUFFIXES = {".ckpt", ".pt", ".pth", ".bin"}
_KERAS_SUFFIXES = {".keras", ".h5", ".hdf5"}
_SAFETENSORS_SUFFIXES = {".safetensors"}
# Keys under which training loops commonly nest the weights inside a checkpoint dict.
_NESTED_STATE_KEYS = ("state_dict", "model_state_dict", "model", "module")


class CLIError(Exception):
    """A user-facing error: printed as one line on stderr, exit code 2."""


# --------------------------------------------------------------------------------------------------- formatting


def _format_value(value: Any) -> str:
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
    cells = [[_format_value(row.get(col)) for col in columns] for row in rows]
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
        if report.options.get("mp_fit"):
            columns += list(MP_COLUMNS)
        if not report.options.get("randomize", True):
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
    out.extend(f"  {name.ljust(width)}  {_format_value(value)}" for name, value in summary.items())
    return "\n".join(out)


def _jsonable(value: Any) -> Any:
    # JSON has no NaN: write null so that every JSON reader accepts the file.
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    return value


def _csv_text(rows: Sequence[Mapping[str, Any]]) -> str:
    buffer = io.StringIO()
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


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


# --------------------------------------------------------------------------------------------------- loading


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0].strip()


def _sniff_format(path: Path) -> str | None:
    """Guess the format of a file without a known suffix from its first bytes."""
    with path.open("rb") as fh:
        head = fh.read(16)
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError):
            return None
        if "model.weights.h5" in names or "config.json" in names:
            return "keras"
        if any(n.endswith("data.pkl") for n in names):
            return "torch"
        return None
    if head.startswith(b"\x89HDF"):
        return "keras"
    if head[:1] == b"\x80":  # a pickle protocol marker: torch's legacy format
        return "torch"
    if len(head) >= 9 and head[8:9] == b"{":  # safetensors: u64 header length, then a JSON header
        return "safetensors"
    return None


def _detect_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in _TORCH_SUFFIXES:
        return "torch"
    if suffix in _SAFETENSORS_SUFFIXES:
        return "safetensors"
    if suffix in _KERAS_SUFFIXES:
        return "keras"
    fmt = _sniff_format(path)
    if fmt is None:
        raise CLIError(
            f"{path}: not a recognized model file (expected a .ckpt, .pt, .pth, .safetensors or .keras file)"
        )
    return fmt


def _is_tensor_like(value: Any) -> bool:
    return hasattr(value, "shape") and hasattr(value, "dtype")


def _tensors_to_numpy(tensors: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Torch tensors to numpy arrays, so that the numbers do not depend on the file format (the core shuffles
    torch tensors with a torch generator). Dtypes numpy lacks (bfloat16, float8 ...) become float32; tied
    tensors stay tied (one conversion per storage), so the analysis still counts them once."""
    import torch

    converted: dict[tuple[Any, ...], np.ndarray] = {}
    out = {}
    for name, tensor in tensors.items():
        tensor = tensor.detach().cpu()
        key = (tensor.data_ptr(), tuple(tensor.shape), tensor.stride(), tensor.dtype)
        if key not in converted:
            if tensor.is_floating_point() and tensor.dtype not in (
                torch.float16,
                torch.float32,
                torch.float64,
            ):
                converted[key] = tensor.to(torch.float32).numpy()
            else:
                converted[key] = tensor.numpy()
        out[str(name)] = converted[key]
    return out


def _state_dict_of(obj: Any, path: Path) -> dict[str, np.ndarray]:
    if not isinstance(obj, Mapping):
        raise CLIError(f"{path}: holds a {type(obj).__name__}, not a state dict or a checkpoint")
    tensors = obj
    for key in _NESTED_STATE_KEYS:
        inner = obj.get(key)
        if isinstance(inner, Mapping) and any(_is_tensor_like(v) for v in inner.values()):
            tensors = inner
            break
    return _tensors_to_numpy({k: v for k, v in tensors.items() if _is_tensor_like(v)})


def _load_torch(path: Path) -> dict[str, Any]:
    try:
        import torch
    except ImportError as exc:
        raise CLIError(f"{path}: reading torch checkpoints needs torch: pip install torch") from exc
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower():
            raise CLIError(
                f"{path}: holds pickled Python objects that safe loading refuses; "
                "save model.state_dict() (or a Lightning checkpoint) instead"
            ) from exc
        raise CLIError(f"{path}: not a torch checkpoint ({_first_line(exc)})") from exc
    except Exception as exc:  # truncated zips, text files, ...: torch raises many types
        raise CLIError(f"{path}: cannot read as a torch checkpoint ({_first_line(exc)})") from exc
    return _state_dict_of(obj, path)


def _load_safetensors(path: Path) -> dict[str, Any]:
    try:
        from safetensors import SafetensorError
        from safetensors.numpy import load_file
    except ImportError as exc:
        raise CLIError(
            f"{path}: reading .safetensors files needs safetensors: pip install safetensors"
        ) from exc
    try:
        return dict(load_file(str(path)))
    except (SafetensorError, OSError, ValueError) as exc:  # truncated, not safetensors, unreadable
        raise CLIError(f"{path}: cannot read as safetensors ({_first_line(exc)})") from exc
    except TypeError as exc:  # a dtype numpy lacks (bfloat16, float8 ...): torch can read it
        numpy_error = exc
    try:
        from safetensors.torch import load_file as load_torch_file
    except ImportError:
        raise CLIError(
            f"{path}: cannot read as safetensors without torch ({_first_line(numpy_error)})"
        ) from numpy_error
    try:
        tensors = load_torch_file(str(path), device="cpu")
    except Exception as exc:
        raise CLIError(f"{path}: cannot read as safetensors ({_first_line(exc)})") from exc
    return _tensors_to_numpy(tensors)


def _load_keras(path: Path) -> Any:
    # Check the container first: clearer than Keras' message, and no backend import for a bad file.
    if path.suffix.lower() == ".keras" and not zipfile.is_zipfile(path):
        raise CLIError(
            f"{path}: cannot read as a Keras model (not a zip archive: truncated or another format)"
        )
    if path.suffix.lower() in (".h5", ".hdf5"):
        with path.open("rb") as fh:
            if not fh.read(8).startswith(b"\x89HDF"):
                raise CLIError(f"{path}: cannot read as a Keras model (not an HDF5 file)")
    if "tensorflow" not in sys.modules:
        # Only weights are read: TensorFlow's start-up banners would bury the output (users may override).
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    try:
        import keras
    except ImportError as exc:
        raise CLIError(f"{path}: reading Keras models needs keras: pip install keras") from exc
    try:
        return keras.saving.load_model(str(path), compile=False)
    except Exception as exc:  # keras raises ValueError, OSError, BadZipFile, TypeError ... for bad files
        raise CLIError(f"{path}: cannot read as a Keras model ({_first_line(exc)})") from exc


def load_weights(path: str | Path) -> Any:
    """Load the model or weights saved in ``path`` for `ww_callbacks.analyze`.

    Returns a mapping of names to numpy arrays (torch checkpoints, state dicts, safetensors) or a Keras
    model. Torch files are loaded with ``weights_only=True`` (no code from the file runs); a Lightning
    checkpoint's ``state_dict`` is used. Raises `CLIError` with a one-line message for anything else.

    Example:
        >>> import numpy as np, tempfile, os
        >>> from safetensors.numpy import save_file
        >>> f = os.path.join(tempfile.mkdtemp(), "m.safetensors")
        >>> save_file({"fc.weight": np.ones((4, 3), dtype=np.float32)}, f)
        >>> sorted(load_weights(f))
        ['fc.weight']
    """
    path = Path(path)
    if not path.exists():
        raise CLIError(f"{path}: no such file")
    if path.is_dir():
        raise CLIError(f"{path}: is a directory, expected a model file")
    fmt = _detect_format(path)
    log.debug("loading %s as %s", path, fmt)
    if fmt == "torch":
        return _load_torch(path)
    if fmt == "safetensors":
        return _load_safetensors(path)
    return _load_keras(path)


# --------------------------------------------------------------------------------------------------- analyze


def _progress(items: Sequence[LayerWeights], mode: str) -> Iterable[LayerWeights]:
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
    return tqdm(items, desc="analyzing", unit="layer", file=sys.stderr, delay=delay, leave=False)


def _parse_layers(spec: str | None) -> list[str] | None:
    if not spec:
        return None
    items = [s.strip() for s in spec.split(",") if s.strip()]
    return items or None


def _analyze_path(args: argparse.Namespace) -> SpectralReport:
    path = Path(args.path)
    model = load_weights(path)
    try:
        found = snapshot(model, layers=_parse_layers(args.layers))
    except (TypeError, ValueError) as exc:
        raise CLIError(f"{path}: cannot find layers ({_first_line(exc)})") from exc
    if not found:
        what = "matching --layers " + args.layers if args.layers else "(dense, conv1d, conv2d or embedding)"
        raise CLIError(f"{path}: no analyzable layer {what}")
    # One layer at a time so the bar can move; a single generator keeps the shuffles reproducible.
    rng = np.random.default_rng(args.seed)
    results: list[LayerResult] = []
    options: dict[str, Any] = {}
    start = time.perf_counter()
    for lw in _progress(found, args.progress):
        one = analyze(
            [lw],
            randomize=args.randomize,
            mp_fit=args.mp_fit,
            min_evals=args.min_evals,
            max_evals=args.max_evals,
            rng=rng,
            n_jobs=1,
        )
        results.extend(one.layers)
        options = one.options
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
        raise CLIError(f"--plots needs matplotlib: pip install matplotlib ({_first_line(exc)})") from exc
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
        _emit(json.dumps(_jsonable(payload), indent=2, allow_nan=False), args.json)
    if args.csv is not None:
        _emit(_csv_text(report.to_rows()), args.csv)
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
        raise CLIError(f"{path}: cannot read as a ww-callbacks history file ({_first_line(exc)})") from exc
    if not epochs:
        raise CLIError(f"{path}: the history file holds no analysis")
    # Show the metrics that were computed (rand_distance needs randomize, mp_softrank needs mp_fit).
    metrics = [m for m in HISTORY_METRICS if any(not _isnan(e.get(m)) for e in epochs)]
    if args.json is not None:
        _emit(json.dumps(_jsonable(epochs), indent=2, allow_nan=False), args.json)
    if args.json != "-":
        print(format_table(epochs, ["epoch", "step", "num_summarized", *metrics]))
        if len(epochs) > 1:
            first, last = epochs[0], epochs[-1]
            print(f"\nfrom epoch {first['epoch']} to epoch {last['epoch']}:")
            width = max((len(m) for m in metrics), default=0)
            for m in metrics:
                change = last[m] - first[m]
                print(
                    f"  {m.ljust(width)}  {_format_value(first[m])} -> {_format_value(last[m])}  ({change:+.4f})"
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
        raise CLIError(f"plots need matplotlib: pip install matplotlib ({_first_line(exc)})") from exc
    except (KeyError, ValueError) as exc:  # e.g. --metrics names a metric the file does not have
        raise CLIError(f"cannot plot the {kind} ({_first_line(exc)})") from exc
    except OSError as exc:
        raise CLIError(f"cannot write {path}: {exc.strerror or exc}") from exc


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

    p = sub.add_parser(
        "analyze",
        help="analyze a saved model (.ckpt, .pt/.pth, .safetensors, .keras)",
        description="Analyze the weights in PATH and print the per-layer table and the summary.",
    )
    p.add_argument("path", metavar="PATH", help="a .ckpt, .pt/.pth, .safetensors or .keras file")
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
    p.add_argument("--min-evals", type=int, default=8, help="skip layers with fewer eigenvalues (default: 8)")
    p.add_argument(
        "--max-evals", type=int, default=15000, help="skip layers with more eigenvalues (default: 15000)"
    )
    p.add_argument(
        "--progress",
        choices=("auto", "always", "never"),
        default="auto",
        help="progress bar over layers on stderr (auto: only on a terminal, after a moment)",
    )
    p.set_defaults(func=_cmd_analyze)

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
    except CLIError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
