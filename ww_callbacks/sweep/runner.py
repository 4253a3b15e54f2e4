"""`run_sweep`: analyze a series of checkpoints into a history file, in processes or on a Dask cluster.

Each checkpoint is one task: open it safely (`read_checkpoint`), analyze it with the shuffles seeded by
``(seed, epoch)`` as the callbacks seed them (`ww_callbacks.engine.SpectralMonitor.rng_for`), and send back
the per-layer rows. The main process writes the rows in the order of the series (a result that arrives early
waits for the ones before it), so the history file is the same whatever ran the tasks. A task that fails is
reported and skipped; the others go on. (Numbers agree to rounding across modes: BLAS may use different
thread counts in workers.)

Example:
    >>> import numpy as np, os, tempfile
    >>> from safetensors.numpy import save_file
    >>> d = tempfile.mkdtemp()
    >>> for e in range(2):
    ...     w = np.random.default_rng(e).standard_normal((60, 30)).astype(np.float32)
    ...     save_file({"fc.weight": w}, os.path.join(d, f"epoch={e}.safetensors"))
    >>> result = run_sweep([d], os.path.join(d, "h.jsonl"), jobs=1)
    >>> [o.epoch for o in result.analyzed], result.failed
    ([0, 1], [])
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._util import first_line
from .checkpoints import Checkpoint, epoch_is_saved, find_checkpoints, peek_epoch_and_step, read_checkpoint

__all__ = [
    "CheckpointOutcome",
    "SweepResult",
    "SweepWarning",
    "analyze_checkpoint",
    "number_epochs",
    "run_sweep",
]

log = logging.getLogger(__name__)

#: Options of `ww_callbacks.analyze` a sweep passes on (``traps`` is off by default, as in the callbacks).
SWEEP_DEFAULTS: Mapping[str, Any] = {"randomize": True, "mp_fit": False, "traps": False}


class SweepWarning(UserWarning):
    """Something the user of a sweep should know (the command line prints it as one line)."""


@dataclass
class CheckpointOutcome:
    """What happened to one checkpoint: analyzed (``report`` set), or failed (``error``: one line).

    Example:
        >>> CheckpointOutcome(position=0, path="a.ckpt", key="/a.ckpt", error="a.ckpt: no such file").ok
        False
    """

    position: int
    path: str
    key: str
    epoch: int | None = None
    step: int | None = None
    report: dict[str, Any] | None = None  # SpectralReport.to_dict() without arrays: small to send back
    error: str = ""
    elapsed: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.error and self.report is not None


@dataclass
class SweepResult:
    """The outcome of a sweep: what was analyzed, skipped as already in the history, and what failed.

    Example:
        >>> SweepResult(history=Path("h.jsonl")).analyzed
        []
    """

    history: Path
    analyzed: list[CheckpointOutcome] = field(default_factory=list)
    skipped: list[Checkpoint] = field(default_factory=list)
    failed: list[CheckpointOutcome] = field(default_factory=list)
    elapsed: float = 0.0


def analyze_checkpoint(
    checkpoint: Checkpoint,
    *,
    epoch: int,
    step: int,
    seed: int,
    layers: Any = None,
    options: Mapping[str, Any] | None = None,
) -> CheckpointOutcome:
    """Analyze one checkpoint as epoch ``epoch``; never raises (a failure is the outcome's ``error``, one line).

    Example:
        >>> from pathlib import Path
        >>> analyze_checkpoint(Checkpoint(Path("missing.ckpt"), 0), epoch=0, step=0, seed=0).error
        'missing.ckpt: no such file'
    """
    from ..analysis import analyze  # the workers import the core only when they work

    start = time.perf_counter()
    outcome = CheckpointOutcome(
        position=checkpoint.position, path=str(checkpoint.path), key=checkpoint.key, epoch=epoch, step=step
    )
    try:
        model = read_checkpoint(checkpoint)
        kwargs = {**SWEEP_DEFAULTS, **(options or {})}
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="no analyzable layer", category=RuntimeWarning)
            report = analyze(
                model, layers=layers, rng=np.random.default_rng([int(seed), int(epoch)]), **kwargs
            )
        del model
        if not report.layers:
            raise ValueError(f"{checkpoint.path}: no analyzable layer")
        outcome.report = report.to_dict(include_arrays=False)
    except (
        ValueError,
        TypeError,
        OSError,
    ) as exc:  # WeightsFileError is a ValueError: one line naming the file
        message = first_line(exc)
        outcome.error = message if str(checkpoint.path) in message else f"{checkpoint.path}: {message}"
    except Exception as exc:  # a broken checkpoint must never end the sweep
        outcome.error = f"{checkpoint.path}: {type(exc).__name__}: {first_line(exc)}"
    outcome.elapsed = time.perf_counter() - start
    return outcome


def _limit_threads(threads: int) -> None:
    """Process-pool initializer: BLAS threads per worker, so that N workers do not each use every core."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    threadpool_limits(limits=max(1, int(threads)))


def _task(args: tuple[Checkpoint, int, int, int, Any, Mapping[str, Any]]) -> CheckpointOutcome:
    checkpoint, epoch, step, seed, layers, options = args
    return analyze_checkpoint(checkpoint, epoch=epoch, step=step, seed=seed, layers=layers, options=options)


def _history_index(history: Path) -> tuple[set[str], set[int]]:
    """The checkpoint keys and the epochs already in ``history`` (rows the callbacks wrote have no key)."""
    if not history.exists():
        return set(), set()
    from ..history import read_history_rows

    rows = read_history_rows(history)
    return {str(r["checkpoint"]) for r in rows if r.get("checkpoint")}, {int(r["epoch"]) for r in rows}


def _drop_copies(todo: list[Checkpoint], result: SweepResult) -> list[Checkpoint]:
    """Checkpoints saved at the same epoch and step as an earlier one of the series (Lightning's ``last.ckpt``
    next to ``epoch=4-step=50.ckpt``) are the same training state: analyzed once, the others skipped."""
    first: dict[tuple[int, int], Checkpoint] = {}
    kept = []
    for checkpoint in todo:
        where = peek_epoch_and_step(checkpoint)
        if where in first:
            warnings.warn(
                f"{checkpoint.path} was saved at the same epoch and step as {first[where].path}: analyzed once",
                SweepWarning,
                stacklevel=3,
            )
            result.skipped.append(checkpoint)
            continue
        first[where] = checkpoint
        kept.append(checkpoint)
    return kept


def number_epochs(
    todo: Sequence[Checkpoint], taken: set[int], *, warn: Callable[[str], None] | None = None
) -> list[tuple[int, int]]:
    """The (epoch, step) each new checkpoint is written under.

    The epoch is the checkpoint's own (`peek_epoch_and_step`) when that keeps one checkpoint per epoch in the
    history (``taken``: the epochs already there). The history is keyed by epoch, so when
    checkpoints are saved more often than once per epoch (``every_n_train_steps``, the Trainer's
    ``save_steps``) the new checkpoints are numbered instead, in step order after the epochs already there,
    and ``warn`` is told once; the step column keeps each checkpoint's own step.

    Example:
        >>> from pathlib import Path
        >>> cps = [Checkpoint(Path(f"epoch=0-step={s}.pt"), i) for i, s in enumerate((5, 10))]
        >>> number_epochs(cps, set())
        [(0, 5), (1, 10)]
    """
    own = [peek_epoch_and_step(c) for c in todo]
    saved = [epoch_is_saved(c) for c in todo]
    epochs = [epoch for epoch, _ in own]
    if len(set(epochs)) == len(epochs) and not taken & set(epochs):
        return own
    known = [epoch for epoch, is_saved in zip(epochs, saved, strict=True) if is_saved]
    if len(set(known)) == len(known) and not taken & set(known):
        # Only checkpoints without a saved epoch (unreadable files, names without one) collide: they go after
        # the others; the checkpoints that say their epoch keep it.
        after = max([*known, *taken], default=-1) + 1
        guessed = [i for i, is_saved in enumerate(saved) if not is_saved]
        renumbered = {index: after + rank for rank, index in enumerate(guessed)}
        return [(renumbered.get(i, own[i][0]), own[i][1]) for i in range(len(todo))]
    first = max(taken, default=-1) + 1
    order = sorted(range(len(todo)), key=lambda i: (own[i][1], own[i][0], todo[i].position))
    numbered = dict.fromkeys(range(len(todo)), 0)
    for rank, index in enumerate(order):
        numbered[index] = first + rank
    if warn is not None:
        warn(
            "several checkpoints share an epoch (saved more often than once per epoch): the history's epoch "
            f"column numbers them in step order from {first}; the step column keeps their steps"
        )
    return [(numbered[i], own[i][1]) for i in range(len(todo))]


def _run_local(tasks: Sequence[Any], jobs: int) -> Iterable[CheckpointOutcome]:
    if jobs <= 1 or len(tasks) <= 1:
        for task in tasks:
            yield _task(task)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    threads = max(1, (os.cpu_count() or 1) // jobs)
    # Workers never fork this process (it may run torch or BLAS threads): a fork server that imported the
    # sweep (and torch, when torch files are coming) once starts them cheaply; spawn where there is none.
    context: Any
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        preload = ["ww_callbacks.sweep.runner"]
        if any(_needs_torch(task[0]) for task in tasks) and importlib.util.find_spec("torch") is not None:
            preload.append("torch")
        context.set_forkserver_preload(preload)
    else:
        context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        max_workers=min(jobs, len(tasks)), mp_context=context, initializer=_limit_threads, initargs=(threads,)
    ) as pool:
        futures = {pool.submit(_task, task): task for task in tasks}
        for future in as_completed(futures):
            yield _outcome_of(future, futures[future])


def _needs_torch(checkpoint: Checkpoint) -> bool:
    return checkpoint.path.is_dir() or checkpoint.path.suffix.lower() in (".ckpt", ".pt", ".pth", ".bin")


def _run_dask(tasks: Sequence[Any], scheduler: str) -> Iterable[CheckpointOutcome]:
    try:
        from distributed import Client, as_completed
    except ImportError as exc:
        raise RuntimeError("--scheduler needs dask.distributed: pip install 'ww-callbacks[dask]'") from exc
    try:
        client = Client(scheduler, timeout="10s")
    except OSError as exc:
        raise RuntimeError(f"cannot reach the Dask scheduler at {scheduler} ({first_line(exc)})") from exc
    try:
        futures = client.map(_task, list(tasks), pure=False)
        index = {future.key: task for future, task in zip(futures, tasks, strict=True)}
        for future in as_completed(futures):
            yield _outcome_of(future, index[future.key])
    finally:
        client.close()


def _outcome_of(future: Any, task: Any) -> CheckpointOutcome:
    """The outcome of a finished future; a worker that died (out of memory ...) fails only its checkpoint."""
    try:
        return future.result()
    except Exception as exc:
        checkpoint = task[0]
        return CheckpointOutcome(
            position=checkpoint.position,
            path=str(checkpoint.path),
            key=checkpoint.key,
            error=f"{checkpoint.path}: the worker failed ({type(exc).__name__}: {first_line(exc)})",
        )


def run_sweep(
    paths: Iterable[str | Path],
    history: str | Path,
    *,
    jobs: int | None = None,
    scheduler: str | None = None,
    seed: int = 0,
    layers: Any = None,
    on_outcome: Callable[[CheckpointOutcome], None] | None = None,
    **options: Any,
) -> SweepResult:
    """Analyze the checkpoints under ``paths`` into the JSON-lines ``history`` (appended; re-runs skip the
    checkpoints already in it).

    Args:
        paths: checkpoint files, checkpoint directories, or directories holding them (`find_checkpoints`).
        history: the history file (`ww_callbacks.sinks.history.HistoryWriter` format, plus a ``checkpoint``
            column with each checkpoint's absolute path).
        jobs: worker processes (default: the CPU count; 1 runs in this process).
        scheduler: address of a Dask distributed scheduler (``tcp://host:8786``); its workers must see the
            checkpoint paths. Overrides ``jobs``.
        seed: epoch ``e`` is analyzed with ``numpy.random.default_rng([seed, e])``, as the callbacks do.
        layers: layer filter, as in `ww_callbacks.analyze`.
        on_outcome: called in order of the series with each analyzed or failed checkpoint (progress output).
        options: `ww_callbacks.analyze` options (``randomize``, ``mp_fit``, ``traps``, ``min_evals`` ...).

    Example:
        >>> import tempfile, os
        >>> run_sweep([tempfile.mkdtemp()], os.path.join(tempfile.mkdtemp(), "h.jsonl")).analyzed
        []
    """
    from ..sinks.history import HistoryWriter

    start = time.perf_counter()
    history = Path(history)
    result = SweepResult(history=history)
    done, taken = _history_index(history)
    todo: list[Checkpoint] = []
    for checkpoint in find_checkpoints(paths):
        (result.skipped if checkpoint.key in done else todo).append(checkpoint)
    todo = _drop_copies(todo, result)
    numbers = number_epochs(
        todo, taken, warn=lambda message: warnings.warn(message, SweepWarning, stacklevel=3)
    )
    tasks = [(c, e, s, int(seed), layers, dict(options)) for c, (e, s) in zip(todo, numbers, strict=True)]
    outcomes: Iterable[CheckpointOutcome]
    if scheduler:
        outcomes = _run_dask(tasks, scheduler)
    else:
        outcomes = _run_local(tasks, int(jobs) if jobs else (os.cpu_count() or 1))
    # Write in the order of the series, whatever order the results come back in.
    waiting: dict[int, CheckpointOutcome] = {}
    order = [c.position for c in todo]
    next_index = 0
    with HistoryWriter(history, append=True) as writer:
        for outcome in outcomes:
            waiting[outcome.position] = outcome
            while next_index < len(order) and order[next_index] in waiting:
                ready = waiting.pop(order[next_index])
                next_index += 1
                _record(ready, writer, result)
                if on_outcome is not None:
                    on_outcome(ready)
    result.elapsed = time.perf_counter() - start
    return result


def _record(outcome: CheckpointOutcome, writer: Any, result: SweepResult) -> None:
    from ..spectral.report import SpectralReport

    if not outcome.ok:
        log.info("skipped %s", outcome.error)
        result.failed.append(outcome)
        return
    assert outcome.report is not None and outcome.epoch is not None and outcome.step is not None
    report = SpectralReport.from_dict(outcome.report)
    writer.write(report, epoch=outcome.epoch, step=outcome.step, extra={"checkpoint": outcome.key})
    result.analyzed.append(outcome)
