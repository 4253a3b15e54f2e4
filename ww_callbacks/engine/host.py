"""`Host`: what the engine asks of a training framework, answered by each adapter in its own terms.

The engine (`ww_callbacks.engine.results.ResultPath`) turns an analysis into its consequences: log, decide,
stop, write the sinks. It needs a few primitives that every framework spells differently: how to log scalars at
a step, how to reduce a decision over ranks, how to stop, where its W&B run and log directory are, how to save
state. An adapter subclasses `Host` and overrides what its framework has; the defaults describe a single process
that logs nowhere and cannot stop.

Example:
    >>> class Printing(Host):
    ...     def log(self, values, *, epoch, step):
    ...         print(step, sorted(values))
    >>> Printing().log({"ww/alpha": 3.0}, epoch=0, step=9)
    9 ['ww/alpha']
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from ..distributed import Collective
from ..sinks.discover import Dashboard

__all__ = ["Host"]

log = logging.getLogger(__name__)


class Host:
    """The framework primitives the engine uses. Override what applies; each default is said below.

    Attributes:
        is_main: this process writes the history file and the sinks (rank 0). Default True.
        wandb_step_metric: the x-axis key of the W&B sink (``"epoch"``, ``"trainer/global_step"`` ...).
        peer: what the framework calls one of its processes (a stop decided elsewhere is "another {peer}'s rule").
    """

    is_main: bool = True
    wandb_step_metric: str = "epoch"
    peer: str = "rank"

    # ---------------------------------------------------------------- ranks
    def collective(self) -> Collective | None:
        """The processes to share layers and results with; None (default) in a single process."""
        return None

    def any_rank(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any (a collective when there are several)."""
        return flag

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        return obj

    # ---------------------------------------------------------------- results
    def log(self, values: Mapping[str, float], *, epoch: int, step: int) -> None:
        """Log the scalars of one analysis at its ``step`` (an earlier step than the current one in background)."""

    def info(self, message: str) -> None:
        """Tell the user (once, on rank 0): the stop, the verbose summary line."""
        log.info("%s", message)

    def observe(self, result: Any) -> None:
        """Framework extras after an analysis is logged (the best weights, the best checkpoint ...)."""

    def stop(self, *, epoch: int, step: int, reason: str) -> bool:
        """Ask training to stop after this point; True when it will (False: the framework refused, e.g.
        ``min_epochs``). Default: cannot stop."""
        return False

    def stopping(self) -> bool:
        """Whether training stops already (then later background results are logged but not acted on)."""
        return False

    def save_state(self) -> None:
        """Save the callback's state where the framework keeps it between checkpoints (if it must be pushed)."""

    # ---------------------------------------------------------------- where things are
    def log_dir(self) -> str | None:
        """The framework's log directory, for the default history file (None: no default file). Called on
        every rank: it may be a collective."""
        return None

    def wandb_run(self) -> Any:
        """The framework's own W&B run (its W&B logger's), or None: then the active ``wandb.run``, or a run
        started from ``wandb_init_kwargs``, is used."""
        return None

    def model(self) -> Any:
        """The model being trained (``delta_from="init"`` takes its weights at fit start); default None."""
        return None

    def dashboards(self) -> list[Dashboard]:
        """The TensorBoard and MLflow runs the framework logs to (`ww_callbacks.sinks.discover`); default none
        (an active ``mlflow`` run is found by the engine)."""
        return []

    def balance_targets(self) -> tuple[Any, list[Any]] | None:
        """(the torch model, its optimizers) that balancing factors apply to; None (default): the framework
        has no torch optimizer to balance."""
        return None

    def wandb_summaries_elsewhere(self, run: Any, *, owned: bool) -> bool:
        """Whether the framework itself sends the summary scalars to ``run`` (so the W&B sink must not).
        ``owned``: the engine started that run. Default: only when the engine did not start it."""
        return not owned
