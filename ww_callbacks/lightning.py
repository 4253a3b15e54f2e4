"""`WeightWatcherCallback` for ``lightning.pytorch`` (the ``lightning`` package).

Importing this module imports ``lightning`` but never ``pytorch_lightning``; for that namespace use
`ww_callbacks.pytorch_lightning`, which holds the same callback. Both are written once, in
`ww_callbacks._lightning_base` (hooks, docstring, the engine's `LightningHost`).

Example:
    >>> from lightning.pytorch import Trainer
    >>> from ww_callbacks.lightning import WeightWatcherCallback
    >>> from ww_callbacks.stopping import AlphaBelow
    >>> ww = WeightWatcherCallback(every_n_epochs=1, early_stopping=AlphaBelow(2.0))
    >>> trainer = Trainer(max_epochs=1, callbacks=[ww], logger=False, enable_progress_bar=False)
"""

from __future__ import annotations

from lightning.pytorch import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from ._lightning_base import LightningWatcherMixin, lightning_doc
from .engine import HISTORY_FILENAME

try:
    from lightning.pytorch.loggers import WandbLogger
except ImportError:  # pragma: no cover - depends on the Lightning version
    WandbLogger = None  # type: ignore[assignment,misc]

__all__ = ["HISTORY_FILENAME", "WeightWatcherCallback"]


class WeightWatcherCallback(Callback, LightningWatcherMixin):
    __doc__ = lightning_doc("lightning.pytorch")

    _rank_zero_info = staticmethod(rank_zero_info)
    _wandb_logger_cls = WandbLogger
