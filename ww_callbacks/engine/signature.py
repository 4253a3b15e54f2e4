"""One signature for every callback: the shared options are declared once, in `WatchOptions`.

A callback writes only its own options::

    class WeightWatcherCallback(...):
        @watch_signature
        def __init__(self, *args: Any, run_on: str = "train_epoch_end", **options: Unpack[WatchKwargs]) -> None:
            watch = watch_options(self, args, options)

`watch_signature` gives that ``__init__`` the full signature built from the `WatchOptions` fields (the first
`POSITIONAL_OPTIONS` positional, the callback's own options next, the rest keyword-only), so ``help()``,
``inspect.signature``, IPython and Jupyter show every option with its default; `WatchKwargs` types
``**options`` for static checkers and IDEs; `watch_options` binds the call. `with_shared_options` puts the Args text
(`shared_options_doc`) into every callback's docstring. A new shared option is a field of `WatchOptions` (with its line in the Args
section there) and a key of `WatchKwargs`: no callback changes.

Example:
    >>> import inspect
    >>> class Demo:
    ...     @watch_signature
    ...     def __init__(self, *args, mode: str = "x", **options):
    ...         self.watch = watch_options(self, args, options)
    >>> list(inspect.signature(Demo).parameters)[:7]
    ['every_n_epochs', 'metrics', 'per_layer', 'prefix', 'early_stopping', 'mode', 'layers']
    >>> Demo(2, prefix="spec/").watch.every_n_epochs, Demo(seed=1).watch.seed
    (2, 1)
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import textwrap
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypedDict, TypeVar

from ..balance.rules import NO_PER_VARIABLE_HYPERPARAMETERS, BalanceRule
from ..stopping import StoppingRule

try:
    from typing import Unpack  # type: ignore[attr-defined]  # Python 3.11+
except ImportError:  # pragma: no cover - depends on the Python version
    from typing_extensions import Unpack
from .options import POSITIONAL_OPTIONS, HistoryPath, WatchOptions

__all__ = [
    "Unpack",
    "WatchKwargs",
    "shared_options_doc",
    "watch_options",
    "watch_signature",
    "with_shared_options",
]

F = TypeVar("F", bound=Callable[..., Any])


class WatchKwargs(TypedDict, total=False):
    """`WatchOptions` as keyword arguments (``**options: Unpack[WatchKwargs]``), for type checkers and IDEs;
    a test keeps its keys and types equal to the fields'."""

    every_n_epochs: int | None
    metrics: Sequence[str] | None
    per_layer: bool
    prefix: str
    early_stopping: StoppingRule | None
    layers: Any
    randomize: bool
    mp_fit: bool
    n_random: int
    seed: int | None
    history_path: HistoryPath
    log_wandb: bool
    wandb_init_kwargs: Mapping[str, Any] | None
    media_every_n_epochs: int | None
    log_dashboards: bool
    tensorboard_dir: str | os.PathLike[str] | None
    peft: str | bool
    delta_from: Any
    analyze_kwargs: Mapping[str, Any] | None
    verbose: bool
    shard_layers: bool
    background: bool
    max_pending: int
    eigensolver: str
    balance: BalanceRule | Sequence[BalanceRule] | None


def _field_parameter(f: dataclasses.Field[Any], kind: Any) -> inspect.Parameter:
    return inspect.Parameter(f.name, kind, default=f.default, annotation=f.type)


def watch_signature(init: F) -> F:
    """Give ``init`` (``__init__(self, *args, <own keyword-only options>, **options)``) the full signature:
    ``self``, the `POSITIONAL_OPTIONS`, the callback's own options, then the other shared options."""
    own = [p for p in inspect.signature(init).parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    fields = dataclasses.fields(WatchOptions)
    positional = [f for f in fields if f.name in POSITIONAL_OPTIONS]
    keyword = [f for f in fields if f.name not in POSITIONAL_OPTIONS]
    params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    params += [_field_parameter(f, inspect.Parameter.POSITIONAL_OR_KEYWORD) for f in positional]
    params += own
    params += [_field_parameter(f, inspect.Parameter.KEYWORD_ONLY) for f in keyword]
    init.__signature__ = inspect.Signature(params, return_annotation=None)  # type: ignore[attr-defined]
    return init


def watch_options(
    owner: Any, args: Sequence[Any], options: Mapping[str, Any], *, per_variable_optimizers: bool = True
) -> WatchOptions:
    """Bind a callback's call (positional ``args`` and keyword ``options``) to a checked `WatchOptions`;
    ``TypeError`` for too many positional arguments, a repeated or an unknown option, as Python would say;
    ``ValueError`` for ``balance=`` where the framework's optimizers have no per-variable hyperparameters."""
    name = type(owner).__name__
    if len(args) > len(POSITIONAL_OPTIONS):
        raise TypeError(
            f"{name}() takes at most {len(POSITIONAL_OPTIONS)} positional arguments "
            f"({', '.join(POSITIONAL_OPTIONS)}), {len(args)} were given"
        )
    values = dict(zip(POSITIONAL_OPTIONS, args, strict=False))
    known = {f.name for f in dataclasses.fields(WatchOptions)}
    for key, value in options.items():
        if key in values:
            raise TypeError(f"{name}() got multiple values for argument {key!r}")
        if key not in known:
            raise TypeError(f"{name}() got an unexpected keyword argument {key!r}")
        values[key] = value
    watch = WatchOptions(**values)
    if watch.balance and not per_variable_optimizers:
        raise ValueError(
            f"balance= is not available with {type(owner).__module__}.{name}: {NO_PER_VARIABLE_HYPERPARAMETERS}"
        )
    return watch


def shared_options_doc(indent: int = 4) -> str:
    """The ``Args`` entries of `WatchOptions`' docstring, for callback docstrings (one source for the text).

    Example:
        >>> "history_path:" in shared_options_doc()
        True
    """
    doc = inspect.cleandoc(WatchOptions.__doc__ or "")
    section = doc.split("Args:\n", 1)[1].split("\n\n", 1)[0]
    heading = "Shared options (`ww_callbacks.engine.WatchOptions`; the first five also by position):"
    entries = textwrap.indent(textwrap.dedent(section), "    ")
    return textwrap.indent(f"{heading}\n{entries}", " " * indent)


def with_shared_options(doc: str | None) -> str:
    """A callback's docstring ``doc`` with the shared options' ``Args`` entries (`shared_options_doc`) put in
    before its ``Attributes:`` section; a callback class body says ``__doc__ = with_shared_options(__doc__)``.

    Example:
        >>> lines = ["Spectra.", "", "    Args:", "        own: x.", "", "    Attributes:", "        a: y."]
        >>> doc = with_shared_options(chr(10).join(lines))
        >>> doc.index("own:") < doc.index("history_path:") < doc.index("Attributes:")
        True
    """
    head, mark, tail = (doc or "").partition("\n    Attributes:")
    return f"{head.rstrip()}\n{shared_options_doc()}\n{mark}{tail}"
