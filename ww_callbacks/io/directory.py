"""Model directories saved by ``save_pretrained``: the weight files, read one tensor (or one shard) at a time.

A directory holds its weights as one of (tried in this order)

* ``model.safetensors.index.json`` naming ``*.safetensors`` shards,
* ``model.safetensors``,
* ``pytorch_model.bin.index.json`` naming ``*.bin`` shards,
* ``pytorch_model.bin``.

`ModelDirectory` checks that layout without reading any weights (every file the index names exists, lies in the
directory and holds the tensors the index says; safetensors headers are read and validated), and
`ModelDirectory.iter_layers` then yields the analyzable layers one at a time: safetensors tensors are copied
out of the memory-mapped file one by one, ``.bin`` shards are opened one after another with
``torch.load(weights_only=True, mmap=True)``, so only the layer being analyzed (plus, for ``.bin``, the
mapping of its shard) is in memory. Nothing else in the directory is ever opened but ``config.json``
(``training_args.bin``, ``optimizer.pt``, ``rng_state.pth`` ... stay untouched).

A directory saved by transformers (with ``config.json``) is analyzed under the model's own names and in its order,
as `ww_callbacks.analyze` names the layers of the model in memory (`ww_callbacks.io._hf_names`: transformers 5
saves some modules under older names), so a history swept from checkpoints lines up with the one written while
training. Layers are numbered as `ww_callbacks.layers.mapping.snapshot_mapping` numbers the keys of the whole
state dict (in that order), and otherwise named as it names them: ``encoder.layer.0.attention.self.query`` for ``encoder.layer.0.attention.self.query.weight``,
ids counting every candidate key from 1, shard by shard (shards in file-name order; inside a safetensors shard
keys in natural order, inside a ``.bin`` shard in saved order). Weights shared by several keys of one ``.bin``
shard (tied embeddings) are analyzed once; safetensors files never hold shared tensors
(``save_pretrained`` drops the duplicates).

Example:
    >>> import json, os, tempfile, numpy as np
    >>> from safetensors.numpy import save_file
    >>> d = tempfile.mkdtemp()
    >>> save_file({"fc.weight": np.ones((20, 10), dtype=np.float32)}, os.path.join(d, "model.safetensors"))
    >>> [lw.name for lw in ModelDirectory(d).iter_layers()]
    ['fc']
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from .._util import first_line
from ..layers.base import select_layers
from ..layers.builders import storage_identity
from ..layers.mapping import snapshot_mapping, unwrap_state_dict
from ..spectral.frameworks import is_torch_tensor
from ..spectral.weights import LayerWeights
from ._hf_names import model_layout
from ._loaders import WeightsFileError, load_safetensors, load_torch, tensors_to_numpy

__all__ = ["INDEX_FILES", "WEIGHT_FILES", "ModelDirectory", "is_model_directory"]

log = logging.getLogger(__name__)

#: Index files of sharded checkpoints, in the order they are looked for, with the format of their shards.
INDEX_FILES = (("model.safetensors.index.json", "safetensors"), ("pytorch_model.bin.index.json", "torch"))
#: Single-file weights of an unsharded directory, in the order they are looked for.
WEIGHT_FILES = (("model.safetensors", "safetensors"), ("pytorch_model.bin", "torch"))

_SHARD_PATTERN = re.compile(r"^(model|pytorch_model)-\d+-of-\d+\.(safetensors|bin)$")


def is_model_directory(path: Any) -> bool:
    """True when ``path`` names an existing directory (what `ModelDirectory` reads).

    Example:
        >>> import tempfile
        >>> is_model_directory(tempfile.gettempdir()), is_model_directory("model.pt")
        (True, False)
    """
    try:
        return Path(path).is_dir()
    except (TypeError, OSError):
        return False


def _natural_key(name: str) -> list[Any]:
    """Sort ``layer.10`` after ``layer.9``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _is_weight_key(name: str) -> bool:
    return name.endswith(".weight")


class ModelDirectory:
    """The weight files of a ``save_pretrained`` directory, checked up front and read lazily.

    Raises `WeightsFileError` (a ``ValueError``) with a one-line message naming the file when the directory holds
    no weights, an index names a file that is missing (or lies outside the directory), or a shard is unreadable
    or truncated.

    Attributes:
        path: the directory.
        format: ``"safetensors"`` or ``"torch"``.
        files: the weight files, in reading order.
        names: tensor names per file (from the index or the safetensors headers; None for a ``.bin`` file
            without an index, whose names are only known once it is opened).
        shapes: tensor name -> shape, from the safetensors headers (empty for ``.bin`` files).

    Example:
        >>> import os, tempfile, numpy as np
        >>> from safetensors.numpy import save_file
        >>> d = tempfile.mkdtemp()
        >>> save_file({"a.weight": np.ones((9, 8), dtype=np.float32)}, os.path.join(d, "model.safetensors"))
        >>> md = ModelDirectory(d)
        >>> md.format, [f.name for f in md.files]
        ('safetensors', ['model.safetensors'])
    """

    def __init__(self, path: str | Any) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise WeightsFileError(f"{self.path}: not a directory")
        self.format, self.files, self.names = self._find_weights()
        self.shapes: dict[str, tuple[int, ...]] = {}
        if self.format == "safetensors":
            self._read_safetensors_headers()

    # ------------------------------------------------------------------ layout
    def _find_weights(self) -> tuple[str, list[Path], dict[Path, list[str] | None]]:
        for index_name, fmt in INDEX_FILES:
            index = self.path / index_name
            if index.is_file():
                files, names = self._read_index(index)
                return fmt, files, names
        for file_name, fmt in WEIGHT_FILES:
            single = self.path / file_name
            if single.is_file():
                return fmt, [single], {single: None}
        shards = sorted(p.name for p in self.path.iterdir() if _SHARD_PATTERN.match(p.name))
        if shards:
            kind = "model.safetensors" if shards[0].endswith(".safetensors") else "pytorch_model.bin"
            raise WeightsFileError(
                f"{self.path}: holds weight shards ({shards[0]} ...) but not their index {kind}.index.json"
            )
        raise WeightsFileError(
            f"{self.path}: no model weights in this directory (expected model.safetensors, "
            "model.safetensors.index.json, pytorch_model.bin or pytorch_model.bin.index.json)"
        )

    def _read_index(self, index: Path) -> tuple[list[Path], dict[Path, list[str] | None]]:
        try:
            data = json.loads(index.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise WeightsFileError(f"{index}: cannot read the index ({first_line(exc)})") from exc
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise WeightsFileError(f"{index}: not a weights index (no weight_map)")
        root = self.path.resolve()
        names: dict[Path, list[str] | None] = {}
        for tensor, file_name in weight_map.items():
            if not isinstance(file_name, str) or not file_name:
                raise WeightsFileError(f"{index}: tensor {tensor!r} maps to {file_name!r}, not a file name")
            file = self.path / file_name
            # An index is someone else's file: it may only point at files inside this directory.
            if file.resolve().parent != root:
                raise WeightsFileError(f"{index}: names {file_name!r}, which is not a file in {self.path}")
            if file not in names:
                if not file.is_file():
                    raise WeightsFileError(f"{file}: missing (named by {index.name})")
                names[file] = []
            listed = names[file]
            assert listed is not None
            listed.append(str(tensor))
        files = sorted(names, key=lambda p: _natural_key(p.name))
        return files, {f: names[f] for f in files}

    def _read_safetensors_headers(self) -> None:
        try:
            from safetensors import SafetensorError, safe_open
        except ImportError as exc:
            raise WeightsFileError(
                f"{self.path}: reading .safetensors files needs safetensors: pip install safetensors"
            ) from exc
        for file in self.files:
            try:
                with safe_open(str(file), framework="numpy") as handle:
                    keys = list(handle.keys())
                    shapes = {k: tuple(int(d) for d in handle.get_slice(k).get_shape()) for k in keys}
            except (SafetensorError, OSError, ValueError) as exc:  # truncated, not safetensors, unreadable
                raise WeightsFileError(f"{file}: cannot read as safetensors ({first_line(exc)})") from exc
            listed = self.names[file]
            if listed is None:
                self.names[file] = sorted(keys, key=_natural_key)
            else:
                missing = sorted(set(listed) - set(keys))
                if missing:
                    raise WeightsFileError(
                        f"{file}: does not hold {missing[0]!r}"
                        + (f" and {len(missing) - 1} more tensors" if len(missing) > 1 else "")
                        + " that the index places there (a wrong or mixed-up shard)"
                    )
                self.names[file] = sorted(listed, key=_natural_key)
            self.shapes.update(shapes)

    # ------------------------------------------------------------------ reading
    def _tensors(self, file: Path) -> Iterator[tuple[str, Callable[[], tuple[Any, Any]]]]:
        """(name, read) for each tensor of ``file``; ``read()`` gives (numpy array, storage identity or None), so
        that tensors the analysis skips are never read."""
        if self.format == "safetensors":
            for name in self.names[file] or []:
                yield name, functools.partial(self._safetensors_tensor, file, name)
            return
        state = _load_torch_shard(file)
        wanted = self.names[file]
        if wanted is None:  # a single .bin without index: its keys are the whole state dict
            self.names[file] = wanted = [str(k) for k in state]
        absent = [n for n in wanted if n not in state]
        if absent:
            raise WeightsFileError(
                f"{file}: does not hold {absent[0]!r} that the index places there (a wrong or mixed-up shard)"
            )
        for name in [k for k in state if k in set(wanted)]:
            if hasattr(state[name], "shape") and hasattr(state[name], "dtype"):
                yield name, functools.partial(_torch_tensor, state, name)
        del state

    def _safetensors_tensor(self, file: Path, name: str) -> tuple[Any, None]:
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(file), framework="numpy") as handle:
                return handle.get_tensor(name), None
        except TypeError:  # a dtype numpy lacks (bfloat16, float8 ...): read through torch
            pass
        except (SafetensorError, OSError, ValueError) as exc:
            raise WeightsFileError(f"{file}: cannot read tensor {name!r} ({first_line(exc)})") from exc
        try:
            with safe_open(str(file), framework="pt") as handle:
                tensor = handle.get_tensor(name)
        except Exception as exc:
            raise WeightsFileError(f"{file}: cannot read tensor {name!r} ({first_line(exc)})") from exc
        return tensors_to_numpy({name: tensor})[name], None

    def _all_names(self) -> list[str] | None:
        names: list[str] = []
        for file in self.files:
            listed = self.names[file]
            if listed is None:
                return None
            names.extend(listed)
        return names

    def iter_layers(self, *, layers: Any = None) -> Iterator[LayerWeights]:
        """Yield the analyzable layers one at a time, as `snapshot` would describe the whole state dict.

        ``layers`` filters as in `ww_callbacks.analyze`. The weights of a yielded layer are read in place (no
        copy); drop the layer before asking for the next one to keep one layer in memory.

        Example:
            >>> import os, tempfile, numpy as np
            >>> from safetensors.numpy import save_file
            >>> d = tempfile.mkdtemp()
            >>> w = {"a.weight": np.ones((9, 8), np.float32), "a.bias": np.ones(9, np.float32),
            ...      "b.weight": np.ones((7, 6), np.float32)}
            >>> save_file(w, os.path.join(d, "model.safetensors"))
            >>> [(lw.layer_id, lw.name) for lw in ModelDirectory(d).iter_layers(layers="-a")]
            [(2, 'b')]
        """
        all_names = self._all_names()
        # weightwatcher's state-dict rule, over the whole directory: with any ``.weight`` key only those count.
        by_weight = None if all_names is None else any(_is_weight_key(n) for n in all_names)
        layout = model_layout(self.path, all_names or []) or {}  # a transformers model's own names, if any
        layer_id = 1
        owners: dict[tuple[Path, Any], str] = {}
        for file, name, read in self._ordered_tensors(layout):
            file_by_weight = by_weight
            if file_by_weight is None:  # known once a .bin without index is open (see `_tensors`)
                file_by_weight = any(_is_weight_key(n) for n in self.names[file] or [])
            if file_by_weight and not _is_weight_key(name):
                continue
            own_name = layout[name][0] if name in layout else name
            this_id, layer_id = layer_id, layer_id + 1
            if len(self.shapes.get(name, (0, 0))) not in (2, 4):
                continue  # 1-D norms, scalars: never analyzed, so never read
            array, identity = read()
            if identity is not None and (file, identity) in owners:  # ties live within one .bin shard
                log.debug(
                    "%s: %s shares its weights with %s; analyzed once", file, name, owners[file, identity]
                )
                continue
            if identity is not None:
                owners[file, identity] = name
            found = snapshot_mapping({own_name: array}, copy=False)
            del array
            if not found:
                continue
            selected = select_layers([dataclasses.replace(found[0], layer_id=this_id)], layers)
            del found  # hold one layer at a time (the consumer drops it before asking again)
            while selected:
                yield selected.pop()

    def _ordered_tensors(
        self, layout: Mapping[str, tuple[str, int]]
    ) -> Iterator[tuple[Path, str, Callable[[], tuple[Any, Any]]]]:
        """(file, saved name, read) in the model's layer order where ``layout`` knows it (saved order otherwise):
        across files for safetensors (any tensor can be read alone), within each shard for ``.bin`` files."""

        def order(item: tuple[Path, str, Any]) -> tuple[int, int]:
            return (0, layout[item[1]][1]) if item[1] in layout else (1, 0)

        if layout and self.format == "safetensors":
            entries: list[tuple[Path, str, Callable[[], tuple[Any, Any]]]] = [
                (f, n, functools.partial(self._safetensors_tensor, f, n))
                for f in self.files
                for n in self.names[f] or []
            ]
            yield from sorted(entries, key=order)
            return
        for file in self.files:
            in_file = [(file, name, read) for name, read in self._tensors(file)]
            yield from sorted(in_file, key=order) if layout else in_file
            del in_file

    def __repr__(self) -> str:
        return f"ModelDirectory({str(self.path)!r}, format={self.format!r}, files={len(self.files)})"


def _torch_tensor(state: Mapping[str, Any], name: str) -> tuple[Any, Any]:
    """One tensor of a loaded ``.bin`` shard as numpy, with the identity of its storage (ties)."""
    tensor = state[name]
    identity = storage_identity(tensor)
    return (tensors_to_numpy({name: tensor})[name] if is_torch_tensor(tensor) else tensor), identity


def _load_torch_shard(file: Path) -> Mapping[str, Any]:
    """One ``.bin`` shard with ``weights_only=True``, memory-mapped when the file allows it."""
    try:
        import torch
    except ImportError as exc:
        raise WeightsFileError(f"{file}: reading torch checkpoints needs torch: pip install torch") from exc
    import zipfile

    if zipfile.is_zipfile(file):  # torch's default format since 1.6: memory-mappable
        try:
            state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        except Exception:
            state = None  # let the regular loader give its one-line reason
        if isinstance(state, Mapping):
            return unwrap_state_dict(state)
    # The regular loader refuses unsafe pickles and unreadable files with one line (it converts to numpy).
    return load_torch(file)


def load_directory(path: str | Any) -> dict[str, Any]:
    """Every tensor of a model directory in one mapping of names to numpy arrays (the whole model in memory), under
    the names and in the layer order of the model in memory for a transformers directory (as
    `ModelDirectory.iter_layers` names them).

    `ww_callbacks.analyze` reads directories layer by layer instead (`ModelDirectory.iter_layers`).

    Example:
        >>> import os, tempfile, numpy as np
        >>> from safetensors.numpy import save_file
        >>> d = tempfile.mkdtemp()
        >>> save_file({"fc.weight": np.ones((4, 3), dtype=np.float32)}, os.path.join(d, "model.safetensors"))
        >>> sorted(load_directory(d))
        ['fc.weight']
    """
    directory = ModelDirectory(path)
    out: dict[str, Any] = {}
    for file in directory.files:
        loaded = load_safetensors(file) if directory.format == "safetensors" else load_torch(file)
        wanted = directory.names[file]
        for name in wanted if wanted is not None else list(loaded):
            if name not in loaded:
                raise WeightsFileError(f"{file}: does not hold {name!r} that the index places there")
            out[name] = loaded[name]
    layout = model_layout(directory.path, list(out)) or {}
    if not layout:
        return out
    ordered = sorted(out, key=lambda name: (0, layout[name][1]) if name in layout else (1, 0))
    return {layout.get(name, (name, 0))[0]: out[name] for name in ordered}
