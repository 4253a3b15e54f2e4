"""`WeightWatcherCallback` for ``lightning.pytorch`` (the ``lightning`` package).

Importing this module imports ``lightning`` but never ``pytorch_lightning``; for that namespace use
`ww_callbacks.pytorch_lightning`, which holds the same callback.

Example:
    >>> from lightning.pytorch import Trainer
    >>> from ww_callbacks.lightning import WeightWatcherCallback
    >>> from ww_callbacks.stopping import AlphaBelow
    >>> ww = WeightWatcherCallback(every_n_epochs=1, early_stopping=AlphaBelow(2.0))
    >>> trainer = Trainer(max_epochs=1, callbacks=[ww], logger=False, enable_progress_bar=False)
"""

from __future__ import annotations

from ._lightning_impl import HISTORY_FILENAME, build_callback_class

__all__ = ["HISTORY_FILENAME", "WeightWatcherCallback"]

WeightWatcherCallback = build_callback_class("lightning.pytorch", __name__)
