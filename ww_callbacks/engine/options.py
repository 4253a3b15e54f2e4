"""`WatchOptions`: the options every callback shares, with their defaults and their checks, in one place.

The Lightning and Keras callbacks (and any later one) spell these options out in their own signatures, for
IDEs and docs, and hand them over in one piece with ``WatchOptions.pick(locals())``; a test keeps those
signatures in step with the fields here (same names, order, kinds and defaults). Framework-only options
(``run_on``, ``restore_best_weights`` ...) stay with their callback.

Example:
    >>> from ww_callbacks.stopping import AlphaBelow
    >>> opts = WatchOptions(every_n_epochs=2, early_stopping=AlphaBelow(2.0), randomize=False)
    >>> opts.metrics
    ('alpha', 'alpha_weighted', 'log_spectral_norm', 'num_nonfinite_layers')
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..balance.rules import BalanceRule, check_rules
from ..layers.peft import PEFT_MODES
from ..spectral.catalog import METRICS, default_metrics, metric_available, missing_option
from ..stopping import StoppingRule

__all__ = ["DEFAULT_METRICS", "HISTORY_FILENAME", "POSITIONAL_OPTIONS", "HistoryPath", "WatchOptions"]

#: Summary metrics logged by default (``rand_distance`` only when ``randomize=True``); see the metric table.
DEFAULT_METRICS = default_metrics()

#: Name of the history file in the framework's log directory (``history_path=None`` where there is one).
HISTORY_FILENAME = "ww_history.jsonl"

#: Options a callback also takes by position, in this order; all others are keyword-only.
POSITIONAL_OPTIONS = ("every_n_epochs", "metrics", "per_layer", "prefix", "early_stopping")

#: Options the engine passes to `ww_callbacks.analyze` itself; ``analyze_kwargs`` may not repeat them.
OWN_ANALYZE_OPTIONS = (
    "layers",
    "randomize",
    "mp_fit",
    "seed",
    "rng",
    "n_random",
    "collective",
    "shard_layers",
    "eigensolver",
)

HistoryPath = str | os.PathLike[str] | bool | None


@dataclass(frozen=True)
class WatchOptions:
    """What to analyze, when, what to log and where; checked once, when built.

    Args:
        every_n_epochs: analyze at the end of every n-th epoch (epochs 0-based: n-1, 2n-1, ...). None (the
            default): every epoch, unless the callback is given a step schedule (``every_n_train_steps``,
            ``every_n_batches``); setting both is an error (`ww_callbacks.engine.schedule.make_schedule`).
        metrics: summary metrics to log as ``{prefix}{metric}`` (weightwatcher column names, see
            `ww_callbacks.SUMMARY_METRICS`); default `DEFAULT_METRICS` (without ``rand_distance`` when
            ``randomize=False``). Resolved to a tuple.
        per_layer: also log ``{prefix}{layer longname}/{metric}``.
        prefix: prefix of every logged name.
        early_stopping: a `ww_callbacks.stopping.StoppingRule` fed with every report.
        layers: layer filter passed to `ww_callbacks.snapshot` (names, globs, kinds, ids; ``-`` excludes).
        randomize, mp_fit, n_random: options of `ww_callbacks.analyze`.
        seed: seed of the shuffles; epoch ``e`` uses ``numpy.random.default_rng([seed, e])``. None: the engine
            draws one from OS entropy.
        history_path: the JSON-lines history file: None (or True) = the framework's default location,
            ``<log dir>/ww_history.jsonl`` where the framework has a log directory (Lightning) and no file
            where it has none (Keras); False = no file; a path = that file.
        log_wandb: log each report to W&B when a run is active (never imports wandb otherwise).
        wandb_init_kwargs: start a W&B run with these ``wandb.init`` arguments when there is none.
        media_every_n_epochs: spacing, in epochs, of the ESD images on every dashboard (W&B, TensorBoard,
            MLflow): the first analysis, then every this many epochs (None: 5), and the last; 0: none.
        log_dashboards: send the histograms, ESD images and end-of-training plots (and the history file) to the
            TensorBoard and MLflow runs the framework logs to (Lightning's ``TensorBoardLogger`` and
            ``MLFlowLogger``, the Trainer's ``report_to``, ``keras.callbacks.TensorBoard`` in the same ``fit``,
            an active ``mlflow`` run); see docs/guide.md's sink table.
        peft: a model with LoRA layers (PEFT, Keras ``enable_lora``) is analyzed as its adapter updates
            ``B @ A`` (``"adapters"``, and ``"auto"``: the default), its effective weights ``W + scaling * B @ A``
            (``"effective"``) or its modules as they are (``"none"``); see `ww_callbacks.layers.peft`.
        delta_from: analyze ``W - W_base`` instead of ``W``: ``"init"`` (the weights at fit start, kept on the
            host once), or a base model, state dict or model file/directory; None (default): the weights.
        tensorboard_dir: also write everything, scalars included, to a TensorBoard run in this directory
            (for Keras without a ``TensorBoard`` callback, or a run of its own).
        analyze_kwargs: other `ww_callbacks.analyze` options (``min_evals``, ``max_evals``, ``n_jobs`` ...);
            ``traps`` defaults to False here (pass ``{"traps": True}`` for ``num_traps`` and the ``rand_*``
            columns). Resolved to a dict.
        verbose: log (INFO) each analysis' summary line, not only the stop.
        shard_layers: in a distributed run (Lightning DDP, FSDP2/ModelParallel), each rank analyzes a
            cost-balanced share of the layers and the results are merged on every rank (the same report as one
            process); False: rank 0 analyzes every layer. Weights that are DTensors are gathered one layer at a
            time either way.
        background: analyze in a worker thread: at the analysis point only the analyzed matrices are copied
            (`ww_callbacks.engine.background`), the results are recorded and logged when ready, at the step they
            belong to, and a stopping decision takes effect at the next hook. Same numbers as ``False``.
        max_pending: analyses queued or running in the worker at most; at an analysis point with that many
            pending, training waits for the oldest (counted in the history's ``background_waits``).
        eigensolver: ``"auto"`` (torch on the weights' accelerator, numpy on the CPU), ``"numpy"`` or
            ``"torch"``: where the eigenvalues are computed (`ww_callbacks.analyze`); the same numbers either way.
        balance: act on the spectra: a `ww_callbacks.balance` rule (``TempBalance()``: per-layer learning rates;
            ``AlphaDecay()``: per-layer weight decays) or a list of them. The factors of each analysis apply at every
            optimizer step until the next one (the user's optimizer and scheduler stay theirs; torch optimizers
            only: Lightning, the Hugging Face Trainer); they are logged (``{prefix}lr_factor/min|max``), written
            to the history and kept in checkpoints. Resolved to a tuple.

    Example:
        >>> WatchOptions(history_path=3)
        Traceback (most recent call last):
        ...
        TypeError: history_path must be None, False, True or a path (str or os.PathLike), got int 3
    """

    every_n_epochs: int | None = None
    metrics: Sequence[str] | None = None
    per_layer: bool = False
    prefix: str = "ww/"
    early_stopping: StoppingRule | None = None
    layers: Any = None
    randomize: bool = True
    mp_fit: bool = False
    n_random: int = 1
    seed: int | None = None
    history_path: HistoryPath = None
    log_wandb: bool = True
    wandb_init_kwargs: Mapping[str, Any] | None = None
    media_every_n_epochs: int | None = None
    log_dashboards: bool = True
    tensorboard_dir: str | os.PathLike[str] | None = None
    peft: str | bool = "auto"
    delta_from: Any = None
    analyze_kwargs: Mapping[str, Any] | None = field(default=None, repr=False)
    verbose: bool = False
    shard_layers: bool = True
    background: bool = False
    max_pending: int = 1
    eigensolver: str = "auto"
    balance: BalanceRule | Sequence[BalanceRule] | None = None

    def __post_init__(self) -> None:
        if self.every_n_epochs is not None and int(self.every_n_epochs) < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {self.every_n_epochs}")
        if int(self.max_pending) < 1:
            raise ValueError(f"max_pending must be >= 1, got {self.max_pending}")
        if self.n_random < 1:
            raise ValueError(f"n_random must be >= 1, got {self.n_random}")
        if self.eigensolver not in ("auto", "numpy", "torch"):
            raise ValueError(f"eigensolver must be 'auto', 'numpy' or 'torch', got {self.eigensolver!r}")
        if self.peft not in (*PEFT_MODES, True, False):
            raise ValueError(f"peft must be one of {PEFT_MODES} (or True/False), got {self.peft!r}")
        if self.media_every_n_epochs is not None and int(self.media_every_n_epochs) < 0:
            raise ValueError(f"media_every_n_epochs must be >= 0 or None, got {self.media_every_n_epochs}")
        _check_history_path(self.history_path)
        rule = self.early_stopping
        if rule is not None and not isinstance(rule, StoppingRule):
            raise TypeError(
                f"early_stopping must be a ww_callbacks.stopping.StoppingRule, got {type(rule).__name__}"
            )
        kwargs = dict(self.analyze_kwargs or {})
        clash = sorted(set(kwargs) & set(OWN_ANALYZE_OPTIONS))
        if clash:
            raise ValueError(f"pass {', '.join(clash)} as arguments of the callback, not in analyze_kwargs")
        # The callbacks log summary metrics; the correlation-trap columns (the MP fit of the shuffled ESD) are
        # not among them and cost about half of the randomization: off unless asked for.
        kwargs.setdefault("traps", False)
        resolved = {
            "every_n_epochs": None if self.every_n_epochs is None else int(self.every_n_epochs),
            "metrics": self._checked_metrics(),
            "per_layer": bool(self.per_layer),
            "prefix": str(self.prefix),
            "randomize": bool(self.randomize),
            "mp_fit": bool(self.mp_fit),
            "n_random": int(self.n_random),
            "seed": None if self.seed is None else int(self.seed),
            "log_wandb": bool(self.log_wandb),
            "wandb_init_kwargs": None if self.wandb_init_kwargs is None else dict(self.wandb_init_kwargs),
            "media_every_n_epochs": None
            if self.media_every_n_epochs is None
            else int(self.media_every_n_epochs),
            "log_dashboards": bool(self.log_dashboards),
            "tensorboard_dir": None if self.tensorboard_dir is None else os.fspath(self.tensorboard_dir),
            "peft": "adapters" if self.peft is True else ("none" if self.peft is False else self.peft),
            "analyze_kwargs": kwargs,
            "verbose": bool(self.verbose),
            "shard_layers": bool(self.shard_layers),
            "background": bool(self.background),
            "max_pending": int(self.max_pending),
            "eigensolver": str(self.eigensolver),
            "balance": check_rules(self.balance),
        }
        for name, value in resolved.items():
            object.__setattr__(self, name, value)
        if rule is not None:
            self._check_rule(rule)

    @property
    def balance_rules(self) -> tuple[BalanceRule, ...]:
        """The balancing rules (``balance``, resolved to a tuple; empty without balancing)."""
        return tuple(self.balance) if isinstance(self.balance, tuple) else check_rules(self.balance)

    @classmethod
    def pick(cls, values: Mapping[str, Any]) -> WatchOptions:
        """Build the options from the fields found in ``values`` (a callback's ``locals()``); others are ignored.

        Example:
            >>> WatchOptions.pick({"self": None, "prefix": "spec/", "run_on": "x"}).prefix
            'spec/'
        """
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{name: value for name, value in values.items() if name in names})

    def _checked_metrics(self) -> tuple[str, ...]:
        if self.metrics is None:
            return default_metrics(randomize=self.randomize, mp_fit=self.mp_fit)
        metrics = (self.metrics,) if isinstance(self.metrics, str) else tuple(self.metrics)
        for metric in metrics:
            if metric not in METRICS:
                raise ValueError(f"unknown metric {metric!r}: choose from {', '.join(METRICS)}")
            if not metric_available(metric, self):
                raise ValueError(f"metric {metric!r} needs {missing_option(metric)}")
        return metrics

    def _check_rule(self, rule: StoppingRule) -> None:
        # A rule watching rand_distance without randomize=True would fail at its first check: fail now.
        children = getattr(rule, "rules", None)
        if children:
            for child in children:
                self._check_rule(child)
        elif rule.monitor is not None and not metric_available(rule.monitor, self):
            raise ValueError(
                f"{rule!r} monitors {rule.monitor!r}, which needs {missing_option(rule.monitor)}"
            )

    def history_file(self, log_dir: str | os.PathLike[str] | None) -> str | None:
        """The history file to write: `history_path` resolved against the framework's ``log_dir`` (None when
        the framework has none).

        Example:
            >>> WatchOptions().history_file("logs"), WatchOptions(history_path=False).history_file("logs")
            ('logs/ww_history.jsonl', None)
            >>> WatchOptions().history_file(None) is None
            True
        """
        configured = self.history_path
        if configured is False:
            return None
        if configured is None or configured is True:
            return None if log_dir is None else os.path.join(os.fspath(log_dir), HISTORY_FILENAME)
        return os.fspath(configured)


def _check_history_path(value: Any) -> None:
    if value is None or isinstance(value, bool):
        return
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(
            "history_path must be None, False, True or a path (str or os.PathLike), "
            f"got {type(value).__name__} {value!r}"
        )
    if not os.fspath(value):
        raise ValueError("history_path is an empty path: pass False for no history file")
