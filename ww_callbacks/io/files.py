"""Where weights come from: model files, checkpoints and model directories, read into something
`ww_callbacks.snapshot` takes.

`load_weights` reads a Lightning checkpoint (``.ckpt``), a torch state dict or checkpoint dict (``.pt``, ``.pth``,
``.bin``), a ``.safetensors`` file or a Keras model (``.keras``, legacy ``.h5``); files with another suffix are
recognized by their content (`ww_callbacks.io._loaders`). `ww_callbacks.analyze` (given a path) and the command
line both read files through it, and checkpoint dicts are unwrapped by the one function the snapshot code uses
(`ww_callbacks.layers.mapping.unwrap_state_dict`). Every framework is imported only for a file of its kind.

Example:
    >>> import numpy as np, tempfile, os
    >>> from safetensors.numpy import save_file
    >>> f = os.path.join(tempfile.mkdtemp(), "m.safetensors")
    >>> save_file({"fc.weight": np.ones((4, 3), dtype=np.float32)}, f)
    >>> sorted(load_weights(f))
    ['fc.weight']
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ._loaders import WeightsFileError, load_file
from .directory import load_directory

__all__ = ["WeightsFileError", "is_path", "load_weights"]


def is_path(obj: Any) -> bool:
    """True for what `load_weights` takes: a ``str`` or an ``os.PathLike``.

    Example:
        >>> is_path("model.pt"), is_path({"fc.weight": None})
        (True, False)
    """
    return isinstance(obj, (str, os.PathLike))


def load_weights(path: str | Path) -> Any:
    """Load the model or weights saved in ``path`` for `ww_callbacks.analyze`.

    Returns a mapping of names to numpy arrays (torch checkpoints, state dicts, safetensors, a model directory
    saved by ``save_pretrained``: see `ww_callbacks.io.directory`) or a Keras model. Torch files are loaded with ``weights_only=True`` (no code from the file runs); the weights of a
    checkpoint dict are found with `ww_callbacks.layers.mapping.unwrap_state_dict` (Lightning's ``state_dict``,
    ``model``, ``module`` ...). Raises `WeightsFileError` with a one-line message for anything else.

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
        raise WeightsFileError(f"{path}: no such file")
    if path.is_dir():
        return load_directory(path)
    return load_file(path)
