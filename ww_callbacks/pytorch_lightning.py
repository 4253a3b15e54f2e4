"""`WeightWatcherCallback` for ``pytorch_lightning``, the standalone package: the callback of
`ww_callbacks.lightning`, subclassing ``pytorch_lightning.Callback``. Importing this module never imports
``lightning``.
"""

from __future__ import annotations

from pytorch_lightning import Callback

from ._lightning_base import LightningWatcherMixin
from .engine import HISTORY_FILENAME

__all__ = ["HISTORY_FILENAME", "WeightWatcherCallback"]


class WeightWatcherCallback(Callback, LightningWatcherMixin):
    _namespace = "pytorch_lightning"
