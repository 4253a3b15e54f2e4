"""Applying balancing factors to torch optimizers, around each optimizer step, keeping the user's optimizer and
scheduler.

`FactorHooks` registers a step pre-hook and a step post-hook on each optimizer. Just before a step it splits each
param group into sub-groups of equal factors (same settings, ``lr`` / ``weight_decay`` multiplied by the factor)
and just after it puts the user's groups back. So:

* the user's scheduler sees and sets only its own values (recursive schedulers such as ``CosineAnnealingLR`` or
  ``OneCycleLR`` read the group's ``lr`` between steps): at every step each balanced parameter's learning rate is
  exactly ``factor x`` the scheduled one, whatever the scheduler;
* optimizer state (momentum buffers, Adam moments) is kept per parameter, as torch keeps it: nothing is rebuilt;
* any torch optimizer with param groups works (SGD, Adam/AdamW, fused or foreach), as do wrappers that step the
  optimizer they hold (Lightning's ``LightningOptimizer``, accelerate's ``AcceleratedOptimizer``, AMP scalers).

Which parameters a layer's factor covers: the parameters of the module named by the layer (weight and bias), and,
with the rule's ``batchnorm``, those of a BatchNorm that directly follows a balanced Conv2d in module order.
torch is imported lazily.

Example:
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    >>> opt = torch.optim.SGD(net.parameters(), lr=0.1)
    >>> hooks = FactorHooks(net, [opt], lambda: {"lr": {"1": 2.0}}).install()
    >>> seen = []
    >>> _ = opt.register_step_pre_hook(lambda o, a, k: seen.extend(g["lr"] for g in o.param_groups))
    >>> net(torch.ones(1, 4)).sum().backward(); opt.step()
    >>> seen, [g["lr"] for g in opt.param_groups]
    ([0.1, 0.2], [0.1])
    >>> hooks.remove()
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..layers.torch import modules_by_path

__all__ = ["FactorHooks", "unwrap_optimizer"]

log = logging.getLogger(__name__)

#: The hyperparameter each factor multiplies, by the key the factors come under.
HYPERPARAMETERS = ("lr", "weight_decay")


def unwrap_optimizer(optimizer: Any) -> Any:
    """The torch optimizer inside wrappers (Lightning's ``LightningOptimizer``, accelerate's
    ``AcceleratedOptimizer``): the one whose ``step`` runs the update."""
    while _is_torch_optimizer(getattr(optimizer, "optimizer", None)):  # accelerate's wraps and subclasses one
        optimizer = optimizer.optimizer
    return optimizer


def _is_torch_optimizer(obj: Any) -> bool:
    import torch

    return isinstance(obj, torch.optim.Optimizer)


class FactorHooks:
    """Apply ``factors()`` (``{"lr": {layer: f}, "weight_decay": {layer: f}}``, read at every step) to the param
    groups of ``optimizers`` during their steps.

    Args:
        model: the ``torch.nn.Module`` whose layers the factors name (wrappers such as DDP are looked through).
        optimizers: the optimizers to hook (wrappers are unwrapped).
        factors: returns the current factors; an empty mapping leaves every step alone.
        followers: ``{module path: layer}``: modules that take a layer's factor (BatchNorms after their conv).
    """

    def __init__(
        self,
        model: Any,
        optimizers: Sequence[Any],
        factors: Callable[[], Mapping[str, Mapping[str, float]]],
        *,
        followers: Mapping[str, str] | None = None,
    ) -> None:
        self._modules = modules_by_path(model)
        self._optimizers = [unwrap_optimizer(opt) for opt in optimizers]
        self._factors = factors
        self._followers = dict(followers or {})
        self._handles: list[Any] = []
        self._saved: dict[int, list[dict[str, Any]]] = {}
        self._cache: tuple[Any, dict[int, tuple[float, float]]] | None = None

    def install(self) -> FactorHooks:
        """Register the hooks (LBFGS, whose single group holds every parameter, is left alone with a warning)."""
        for optimizer in self._optimizers:
            if not _is_torch_optimizer(optimizer) or type(optimizer).__name__ == "LBFGS":
                log.warning("balance: %s cannot take per-layer factors; left alone", type(optimizer).__name__)
                continue
            self._handles.append(optimizer.register_step_pre_hook(self._split))
            self._handles.append(optimizer.register_step_post_hook(self._restore))
        return self

    def remove(self) -> None:
        """Remove the hooks (the user's groups are in place between steps)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    # ------------------------------------------------------------------ the hooks
    def _split(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        per_param = self._per_parameter()
        if not per_param:
            return
        groups = optimizer.param_groups
        self._saved[id(optimizer)] = groups
        optimizer.param_groups = [sub for group in groups for sub in _split_group(group, per_param)]

    def _restore(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        groups = self._saved.pop(id(optimizer), None)
        if groups is not None:
            optimizer.param_groups = groups

    def _per_parameter(self) -> dict[int, tuple[float, float]]:
        """id(parameter) -> (learning-rate factor, weight-decay factor), rebuilt when the factors change."""
        factors = self._factors()
        if self._cache is not None and self._cache[0] is factors:
            return self._cache[1]
        out: dict[int, tuple[float, float]] = {}
        lr, wd = factors.get("lr") or {}, factors.get("weight_decay") or {}
        for path, module in self._modules.items():
            layer = self._followers.get(path, path)
            pair = (float(lr.get(layer, 1.0)), float(wd.get(layer, 1.0)))
            if pair != (1.0, 1.0):
                for parameter in module.parameters():
                    out[id(parameter)] = pair
        self._cache = (factors, out)
        return out


def _split_group(group: dict[str, Any], per_param: Mapping[int, tuple[float, float]]) -> list[dict[str, Any]]:
    """``group`` as sub-groups of equal factors (itself when no parameter of it has one)."""
    buckets: dict[tuple[float, float], list[Any]] = {}
    for parameter in group["params"]:
        buckets.setdefault(per_param.get(id(parameter), (1.0, 1.0)), []).append(parameter)
    if list(buckets) == [(1.0, 1.0)]:
        return [group]
    out = []
    for (lr_factor, wd_factor), parameters in buckets.items():
        sub = {key: value for key, value in group.items() if key != "params"}
        sub["params"] = parameters
        if lr_factor != 1.0:
            sub["lr"] = group["lr"] * lr_factor
        if wd_factor != 1.0 and "weight_decay" in group:
            sub["weight_decay"] = group["weight_decay"] * wd_factor
        out.append(sub)
    return out


def batchnorm_followers(model: Any, layers: Sequence[str] | None = None) -> dict[str, str]:
    """``{BatchNorm path: conv layer}`` for each BatchNorm directly after one of ``layers`` (a Conv2d; None: any)
    in module order (the reference code's ``batchnorm_type="order"``).

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU())
        >>> batchnorm_followers(net, ["0"])
        {'1': '0'}
    """
    import torch

    wanted = None if layers is None else set(layers)
    previous: str | None = None
    out: dict[str, str] = {}
    for path, module in modules_by_path(model).items():
        if (
            isinstance(module, torch.nn.modules.batchnorm._BatchNorm)
            and previous is not None
            and (wanted is None or previous in wanted)
        ):
            out[path] = previous
        if isinstance(module, torch.nn.Conv2d):
            previous = path
        elif (
            not isinstance(module, torch.nn.modules.batchnorm._BatchNorm)
            and next(module.children(), None) is None
        ):
            previous = None  # another leaf layer in between: the BatchNorm is not that conv's
    return out
