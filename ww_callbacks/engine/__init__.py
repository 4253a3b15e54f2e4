"""The engine under every callback: options, schedule, analysis, results, stopping, sinks and state.

- `WatchOptions` (``options.py``): the options all callbacks share, checked once.
- `EpochSchedule`, `StepSchedule` and the per-analysis RNG (``schedule.py``): when to analyze and with which shuffles.
- `SpectralMonitor` (``monitor.py``): snapshot -> `ww_callbacks.analyze` -> scalars, history, rule decision,
  sinks (`ww_callbacks.sinks.lifecycle`), checkpoint state.
- `ResultPath` (``results.py``): what follows an analysis, for every framework (log, decide, stop, sinks,
  background results), asking the framework's `Host` (``host.py``) for its primitives.
- `EngineViews` (``views.py``): the read-only attributes every callback exposes.
- ``signature.py``: the callbacks' one signature (`WatchKwargs`).

A callback builds one `SpectralMonitor` from its options, a `ResultPath` over it, and a `Host` that answers in its
framework's terms. Use `SpectralMonitor` directly to watch a hand-written training loop.

Example:
    >>> import numpy as np
    >>> from ww_callbacks.engine import SpectralMonitor
    >>> monitor = SpectralMonitor(seed=0, metrics=("alpha",))
    >>> for epoch in range(2):
    ...     result = monitor.run({"fc.weight": np.random.default_rng(epoch).normal(size=(80, 40))}, epoch=epoch)
    >>> [entry["epoch"] for entry in monitor.history]
    [0, 1]
"""

from .host import Host
from .monitor import MonitorResult, SpectralMonitor
from .options import DEFAULT_METRICS, HISTORY_FILENAME, WatchOptions
from .results import ResultPath
from .schedule import EpochSchedule, StepSchedule
from .views import EngineViews

__all__ = [
    "DEFAULT_METRICS",
    "HISTORY_FILENAME",
    "EngineViews",
    "EpochSchedule",
    "Host",
    "ResultPath",
    "StepSchedule",
    "MonitorResult",
    "SpectralMonitor",
    "WatchOptions",
]
