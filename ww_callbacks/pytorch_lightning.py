"""`WeightWatcherCallback` for the ``pytorch_lightning`` package.

Importing this module imports ``pytorch_lightning`` but never ``lightning``; for ``lightning.pytorch`` use
`ww_callbacks.lightning`, which holds the same callback.

Example:
    >>> from pytorch_lightning import Trainer
    >>> from ww_callbacks.pytorch_lightning import WeightWatcherCallback
    >>> from ww_callbacks.stopping import Plateau
    >>> ww = WeightWatcherCallback(early_stopping=Plateau("rand_distance", mode="max", patience=3))
    >>> trainer = Trainer(max_epochs=1, callbacks=[ww], logger=False, enable_progress_bar=False)
"""

from __future__ import annotations

from ._lightning_impl import HISTORY_FILENAME, build_callback_class

__all__ = ["HISTORY_FILENAME", "WeightWatcherCallback"]

WeightWatcherCallback = build_callback_class("pytorch_lightning", __name__)
