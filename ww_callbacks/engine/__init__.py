"""The engine under every callback: options, schedule, analysis, results, stopping, sinks and state.

- `WatchOptions` (``options.py``): the options all callbacks share, checked once.
- `EpochSchedule`, `StepSchedule` and the per-analysis RNG (``schedule.py``): when to analyze and with which shuffles.
- `SpectralMonitor` (``monitor.py``): snapshot -> `ww_callbacks.analyze` -> scalars, history, rule decision,
  sinks (`ww_callbacks.sinks.lifecycle`), checkpoint state.
- `EngineViews` (``views.py``): the read-only attributes every callback exposes.

A callback builds one `SpectralMonitor` from its options and adds only framework plumbing (hooks, ranks,
logging, stopping). Use it directly to watch a hand-written training loop.

Example:
    >>> import numpy as np
    >>> from ww_callbacks.engine import SpectralMonitor
    >>> monitor = SpectralMonitor(seed=0, metrics=("alpha",))
    >>> for epoch in range(2):
    ...     result = monitor.run({"fc.weight": np.random.default_rng(epoch).normal(size=(80, 40))}, epoch=epoch)
    >>> [entry["epoch"] for entry in monitor.history]
    [0, 1]
"""

from .monitor import MonitorResult, SpectralMonitor
from .options import DEFAULT_METRICS, HISTORY_FILENAME, WatchOptions
from .schedule import EpochSchedule, StepSchedule
from .views import EngineViews

__all__ = [
    "DEFAULT_METRICS",
    "HISTORY_FILENAME",
    "EngineViews",
    "EpochSchedule",
    "StepSchedule",
    "MonitorResult",
    "SpectralMonitor",
    "WatchOptions",
]
