"""Which checkpoints a sweep analyzes, and the epoch and step each one was saved at.

`find_checkpoints` turns paths (files, checkpoint directories, or directories holding them) into an ordered list of
`Checkpoint`; `peek_epoch_and_step` reads the epoch and step each was saved at (without loading its weights) and
`read_checkpoint` opens one safely for the analysis:

* a Lightning ``.ckpt`` (or any torch checkpoint dict): its ``epoch`` and ``global_step`` (``step``: optimizer
  steps done), read with ``weights_only=True``;
* a Hugging Face ``checkpoint-*`` directory (or any ``save_pretrained`` directory): the weights
  (`ww_callbacks.io.ModelDirectory`, read layer by layer) and ``trainer_state.json`` (``global_step``; the
  epoch the checkpoint was saved in, 0-based: ``ceil(state.epoch) - 1``). Nothing else in the directory is opened
  (``training_args.bin``, ``optimizer.pt``, ``scheduler.pt``, ``rng_state.pth`` are pickles and stay shut);
* ``.keras`` files (Keras safe mode), ``.safetensors`` and plain state dicts (``.pt``/``.pth``/``.bin``), which
  store no epoch: it is read from the file name (``epoch=3``, ``epoch_3``, ``epoch3``) when the name has one,
  else it is the checkpoint's position in the sorted series (0, 1, ...); the step likewise (``step=40``,
  ``checkpoint-40``), else the epoch.

Example:
    >>> import os, tempfile
    >>> d = tempfile.mkdtemp()
    >>> for name in ("epoch=10.pt", "epoch=2.pt", "notes.txt"):
    ...     _ = open(os.path.join(d, name), "wb").write(b"")
    >>> [c.path.name for c in find_checkpoints([d])]
    ['epoch=2.pt', 'epoch=10.pt']
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..io import WeightsFileError
from ..io.directory import INDEX_FILES, WEIGHT_FILES

__all__ = ["CHECKPOINT_SUFFIXES", "Checkpoint", "find_checkpoints", "peek_epoch_and_step", "read_checkpoint"]

#: File suffixes a sweep picks up inside a directory.
CHECKPOINT_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".safetensors", ".keras", ".h5")
#: Pickled training state inside Hugging Face checkpoint directories: never a checkpoint of its own.
_TRAINING_STATE_FILES = {"training_args.bin", "optimizer.pt", "scheduler.pt", "rng_state.pth", "scaler.pt"}
_EPOCH_IN_NAME = re.compile(r"epoch[=_-]?(\d+)", re.IGNORECASE)
_STEP_IN_NAME = re.compile(r"(?:step[=_-]?|checkpoint-)(\d+)", re.IGNORECASE)


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint of a sweep: its path, its position in the series and its identity in the history.

    ``key`` (the absolute path) is what the history's ``checkpoint`` column records, so that a re-run skips it.

    Example:
        >>> Checkpoint(Path("/tmp/a.ckpt"), 0).key
        '/tmp/a.ckpt'
    """

    path: Path
    position: int

    @property
    def key(self) -> str:
        return str(self.path.resolve())

    @property
    def is_directory(self) -> bool:
        return self.path.is_dir()


def _natural_key(text: str) -> list[Any]:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


def is_weights_directory(path: Path) -> bool:
    """True for a directory holding model weights (a ``save_pretrained`` or HF ``checkpoint-*`` directory).

    Example:
        >>> import tempfile
        >>> is_weights_directory(Path(tempfile.mkdtemp()))
        False
    """
    names = [name for name, _ in (*INDEX_FILES, *WEIGHT_FILES)]
    return path.is_dir() and any((path / name).is_file() for name in names)


def _candidates(directory: Path) -> list[Path]:
    found = []
    for child in directory.iterdir():
        if child.is_dir():
            if is_weights_directory(child):
                found.append(child)
        elif child.suffix.lower() in CHECKPOINT_SUFFIXES and child.name not in _TRAINING_STATE_FILES:
            found.append(child)
    return found


def find_checkpoints(paths: Iterable[str | Path]) -> list[Checkpoint]:
    """The checkpoints named by ``paths``, in natural order of their paths (``epoch=2`` before ``epoch=10``).

    A file is a checkpoint; a directory with model weights (``checkpoint-500/``) is one; any other directory
    contributes the checkpoint files and checkpoint directories directly inside it. Duplicates are dropped.
    A path that does not exist raises `WeightsFileError`.

    Example:
        >>> find_checkpoints([])
        []
    """
    seen: dict[str, Path] = {}
    for item in paths:
        path = Path(item)
        if not path.exists():
            raise WeightsFileError(f"{path}: no such file or directory")
        found = [path] if path.is_file() or is_weights_directory(path) else _candidates(path)
        for p in found:
            seen.setdefault(str(p.resolve()), p)
    ordered = sorted(seen.values(), key=lambda p: _natural_key(str(p)))
    return [Checkpoint(p, i) for i, p in enumerate(ordered)]


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


def _from_name(pattern: re.Pattern[str], name: str) -> int | None:
    match = pattern.findall(name)
    return int(match[-1]) if match else None


def _trainer_state(directory: Path) -> dict[str, Any]:
    state_file = directory / "trainer_state.json"
    if not state_file.is_file():
        return {}
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WeightsFileError(f"{state_file}: not a readable trainer state ({exc})") from exc
    return state if isinstance(state, dict) else {}


def epoch_and_step(checkpoint: Checkpoint, meta: Mapping[str, Any]) -> tuple[int, int]:
    """The (epoch, step) of a checkpoint from its metadata, else from its name, else from its position.

    ``meta`` holds Lightning's ``epoch``/``global_step`` or ``step``, or HF's trainer state (``epoch`` as a
    fraction of epochs done, ``global_step``).

    Example:
        >>> epoch_and_step(Checkpoint(Path("epoch=4-step=50.ckpt"), 7), {})
        (4, 50)
        >>> epoch_and_step(Checkpoint(Path("checkpoint-30"), 2), {"epoch": 1.5, "global_step": 30, "hf": True})
        (1, 30)
    """
    epoch, step = _saved_epoch_and_step(checkpoint, meta)
    epoch = checkpoint.position if epoch is None else epoch
    return int(epoch), int(step if step is not None else epoch)


def _saved_epoch_and_step(checkpoint: Checkpoint, meta: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """(epoch, step) as the checkpoint's metadata or name say them, None where they say nothing."""
    name = checkpoint.path.name
    epoch_value = _number(meta.get("epoch"))
    if epoch_value is not None and meta.get("hf"):
        epoch: int | None = max(math.ceil(epoch_value) - 1, 0)  # HF: epochs done, as a fraction
    elif epoch_value is not None:
        epoch = int(epoch_value)
    else:
        epoch = _from_name(_EPOCH_IN_NAME, name)
    step_value = _number(meta.get("global_step", meta.get("step")))
    step = int(step_value) if step_value is not None else _from_name(_STEP_IN_NAME, name)
    return epoch, step


def read_checkpoint(checkpoint: Checkpoint) -> Any:
    """Open ``checkpoint`` safely for `ww_callbacks.analyze`: a directory as its path (analyzed layer by layer),
    a file loaded now (`ww_callbacks.io.load_weights`). Raises `WeightsFileError` (one line naming the file)
    when it cannot be read safely.

    Example:
        >>> import numpy as np, os, tempfile
        >>> from safetensors.numpy import save_file
        >>> f = os.path.join(tempfile.mkdtemp(), "epoch=2.safetensors")
        >>> save_file({"fc.weight": np.ones((4, 3), dtype=np.float32)}, f)
        >>> sorted(read_checkpoint(Checkpoint(Path(f), 0)))
        ['fc.weight']
    """
    from ..io import ModelDirectory, load_weights

    if checkpoint.path.is_dir():
        ModelDirectory(checkpoint.path)  # checks the layout now: a clear error before any analysis
        return checkpoint.path
    return load_weights(checkpoint.path)


def _torch_metadata(path: Path) -> dict[str, Any]:
    """The scalar entries of a torch checkpoint dict, without reading its tensors (memory-mapped, weights only).

    Empty when the file cannot be read safely: the worker that loads it reports why.
    """
    import zipfile

    try:
        import torch
    except ImportError:
        return {}
    try:
        mmap = zipfile.is_zipfile(path)  # torch's zip format maps lazily; the legacy format is read whole
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception:
        return {}
    if not isinstance(obj, Mapping):
        return {}
    return {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, (int, float))}


def peek_epoch_and_step(checkpoint: Checkpoint) -> tuple[int, int]:
    """(epoch, step) of ``checkpoint`` without loading its weights (`epoch_and_step` on its metadata).

    Example:
        >>> peek_epoch_and_step(Checkpoint(Path("epoch=3-step=12.safetensors"), 0))
        (3, 12)
    """
    return epoch_and_step(checkpoint, _peek_metadata(checkpoint))


def epoch_is_saved(checkpoint: Checkpoint) -> bool:
    """Whether the checkpoint's metadata or name say its epoch (else `epoch_and_step` falls back to its position
    in the series, e.g. for a file that cannot be read at all).

    Example:
        >>> epoch_is_saved(Checkpoint(Path("epoch=3.pt"), 0)), epoch_is_saved(Checkpoint(Path("broken.pt"), 0))
        (True, False)
    """
    return _saved_epoch_and_step(checkpoint, _peek_metadata(checkpoint))[0] is not None


def _peek_metadata(checkpoint: Checkpoint) -> dict[str, Any]:
    path = checkpoint.path
    if path.is_dir():
        state = _trainer_state(path)
        meta: dict[str, Any] = {"hf": True, **{k: state[k] for k in ("epoch", "global_step") if k in state}}
        return meta if len(meta) > 1 else {}
    if path.suffix.lower() in (".ckpt", ".pt", ".pth", ".bin"):
        return _torch_metadata(path)
    return {}
