"""`WeightWatcherCallback` for ``lightning.pytorch`` (the ``lightning`` package).

Importing this module imports ``lightning`` but never ``pytorch_lightning`` (that namespace has
`ww_callbacks.pytorch_lightning`). The callback is written once, in `ww_callbacks._lightning_base`: hooks,
docstring and the engine's `LightningHost`; its docstring has the example.
"""

from __future__ import annotations

from lightning.pytorch import Callback

from ._lightning_base import LightningWatcherMixin
from .engine import HISTORY_FILENAME

__all__ = ["HISTORY_FILENAME", "WeightWatcherCallback"]


class WeightWatcherCallback(Callback, LightningWatcherMixin):
    _namespace = "lightning.pytorch"
