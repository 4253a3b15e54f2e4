"""Where weights come from: model files, checkpoints and model directories, for `ww_callbacks.analyze` and the CLI.

* `files`: one file (``.ckpt``, ``.pt``/``.pth``/``.bin``, ``.safetensors``, ``.keras``/``.h5``) read by
  `load_weights` into a mapping of arrays or a Keras model.
* `directory`: a directory saved by ``save_pretrained`` (safetensors or ``.bin`` shards with their index, or a
  single weights file), read one layer at a time by `ModelDirectory`.
* `source`: `open_layers`, the one entry point that turns a path into the layers to analyze.

Everything refuses unsafe input with a `WeightsFileError` (a ``ValueError``) whose message is one line naming the
file: torch files are read with ``weights_only=True``, Keras files in safe mode.

Example:
    >>> import numpy as np, tempfile, os
    >>> from safetensors.numpy import save_file
    >>> f = os.path.join(tempfile.mkdtemp(), "m.safetensors")
    >>> save_file({"fc.weight": np.ones((4, 3), dtype=np.float32)}, f)
    >>> sorted(load_weights(f))
    ['fc.weight']
"""

from __future__ import annotations

from .directory import ModelDirectory, is_model_directory, load_directory
from .files import WeightsFileError, is_path, load_weights
from .source import LayerSource, open_layers

__all__ = [
    "LayerSource",
    "ModelDirectory",
    "WeightsFileError",
    "is_model_directory",
    "is_path",
    "load_directory",
    "load_weights",
    "open_layers",
]
