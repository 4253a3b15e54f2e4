"""`open_layers`: a path (file or model directory) to the layers to analyze, streamed for directories.

Example:
    >>> import numpy as np, tempfile, os
    >>> from safetensors.numpy import save_file
    >>> f = os.path.join(tempfile.mkdtemp(), "m.safetensors")
    >>> save_file({"fc.weight": np.ones((20, 10), dtype=np.float32)}, f)
    >>> source = open_layers(f)
    >>> source.streaming, [lw.name for lw in source]
    (False, ['fc'])
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..layers import snapshot
from ..spectral.weights import LayerWeights
from .directory import ModelDirectory
from .files import WeightsFileError, load_weights

__all__ = ["LayerSource", "open_layers"]


class LayerSource:
    """The analyzable layers of one path: a list for a file, a one-layer-at-a-time stream for a directory.

    ``streaming`` says which; iterate to get `LayerWeights` (a directory's layers are read as the iteration
    reaches them, so hold on to one at a time). ``description`` names what was read, for messages.

    Example:
        >>> import numpy as np
        >>> source = LayerSource(layers=[], description="nothing")
        >>> source.streaming, list(source)
        (False, [])
    """

    def __init__(
        self,
        *,
        layers: list[LayerWeights] | None = None,
        directory: ModelDirectory | None = None,
        spec: Any = None,
        description: str = "",
    ) -> None:
        self._layers = layers
        self._directory = directory
        self._spec = spec
        self.description = description

    @property
    def total(self) -> int | None:
        """How many layers a file holds (None for a directory: known once it is read).

        Example:
            >>> LayerSource(layers=[]).total
            0
        """
        return None if self._directory is not None else len(self._layers or [])

    @property
    def streaming(self) -> bool:
        """True for a model directory, read layer by layer."""
        return self._directory is not None

    def __iter__(self) -> Iterator[LayerWeights]:
        if self._directory is not None:
            return self._directory.iter_layers(layers=self._spec)
        return iter(self._layers or [])


def open_layers(path: str | Path, *, layers: Any = None) -> LayerSource:
    """Open ``path`` for analysis: a model file is loaded and snapshotted now, a model directory is checked now
    and read layer by layer while the source is iterated. ``layers`` filters as in `ww_callbacks.analyze`.

    Raises `WeightsFileError` (one line naming the file) for a missing, unreadable or unsafe file or directory,
    and ``TypeError``/``ValueError`` for a bad ``layers`` filter.

    Example:
        >>> open_layers("missing.pt")
        Traceback (most recent call last):
        ...
        ww_callbacks.io.WeightsFileError: missing.pt: no such file
    """
    path = Path(path)
    if path.is_dir():
        directory = ModelDirectory(path)
        return LayerSource(directory=directory, spec=layers, description=f"model directory {path}")
    model = load_weights(path)
    if model is None:  # pragma: no cover - load_weights raises instead
        raise WeightsFileError(f"{path}: holds no weights")
    return LayerSource(layers=snapshot(model, layers=layers, copy=False), description=str(path))
