"""LoRA adapters (Hugging Face PEFT, Keras 3 ``Dense.enable_lora``): what a fine-tuned model is analyzed as.

A LoRA layer holds a frozen weight ``W`` and, per adapter, ``A`` (rank x in) and ``B`` (out x rank); the model
uses ``W + scaling * B @ A``. Analyzing its pieces as unrelated layers (``W``, ``A``, a zero ``B``) says nothing
about either the update or the weight in use, so `snapshot` turns them into one of:

* ``peft="adapters"`` (weightwatcher 0.7.7's ``analyze(peft=True)``): one layer per adapter update ``B @ A``
  (unscaled, as weightwatcher), named ``<module>.lora_BA.<adapter>`` with the id of the ``lora_A`` module, whose
  ESD keeps the top ``r`` eigenvalues (``LayerWeights.rank``: the rest are zero); nothing else is analyzed;
* ``peft="effective"``: one layer per adapted matrix, the effective weight ``W + scaling * B @ A`` summed over
  the active adapters with PEFT's own ``scaling`` (``lora_alpha / r``, or ``/ sqrt(r)`` with rsLoRA; merged or
  disabled adapters add nothing: ``W`` already holds a merged update), Keras' ``lora_alpha / rank``; named as
  the layer is named in the model without adapters (``model.layers.0.self_attn.q_proj``), so that histories
  before and after ``merge_and_unload()`` line up; every other layer is analyzed as usual, with the same names.

``peft="auto"`` (the default) is ``"adapters"`` for a model with LoRA layers: the update is what training
changes, it is cheap (rank ``r``), and it matches weightwatcher; a model without adapters is unaffected.
``peft="none"`` analyzes the modules as they are.

Example:
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(20, 30))
    >>> has_lora(net)
    False
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import numpy as np

from .base import LayerWeights
from .builders import dense_layer, tensor_version

__all__ = ["PEFT_MODES", "has_lora", "resolve_peft", "peft_layers"]

log = logging.getLogger(__name__)

#: The accepted ``peft=`` values.
PEFT_MODES = ("auto", "adapters", "effective", "none")


def _torch_lora_modules(model: Any) -> Iterator[tuple[str, Any]]:
    """(path, module) of every PEFT LoRA layer (a module with ``base_layer``, ``lora_A`` and ``lora_B``)."""
    for path, module in model.named_modules():
        if hasattr(module, "base_layer") and hasattr(module, "lora_A") and hasattr(module, "lora_B"):
            yield path, module


def _keras_lora_layers(model: Any) -> Iterator[Any]:
    for layer in getattr(model, "_flatten_layers", lambda **_: [])(include_self=True, recursive=True):
        if getattr(layer, "lora_enabled", False):
            yield layer


def has_lora(model: Any) -> bool:
    """Whether ``model`` (torch or Keras) holds LoRA layers.

    Example:
        >>> has_lora({"fc.weight": None})
        False
    """
    if hasattr(model, "named_modules") and not hasattr(model, "_flatten_layers"):
        return any(True for _ in _torch_lora_modules(model))
    return any(True for _ in _keras_lora_layers(model))


def resolve_peft(model: Any, peft: str | bool | None) -> str:
    """The mode ``peft`` means for ``model``: ``"adapters"``, ``"effective"`` or ``"none"``.

    Example:
        >>> resolve_peft({}, "auto"), resolve_peft({}, True)
        ('none', 'adapters')
    """
    if peft is True:
        peft = "adapters"
    elif peft is False or peft is None:
        peft = "none"
    if peft not in PEFT_MODES:
        raise ValueError(f"peft must be one of {PEFT_MODES} (or True/False), got {peft!r}")
    if peft == "auto":
        return "adapters" if has_lora(model) else "none"
    return str(peft)


def _factors(module: Any, adapter: str) -> tuple[Any, Any]:
    """(left, right) with ``left @ right`` = `_torch_update` (detached copies: the worker may read them)."""
    a = module.lora_A[adapter].weight.detach().clone()
    b = module.lora_B[adapter].weight.detach().clone()
    return (a.T, b.T) if getattr(module, "fan_in_fan_out", False) else (b, a)


def _torch_update(module: Any, adapter: str) -> Any:
    """``B @ A`` of ``adapter`` in ``module``'s weight orientation (float64, on the weights' device)."""
    import torch

    with torch.no_grad():
        a = module.lora_A[adapter].weight.detach().to(torch.float64)
        b = module.lora_B[adapter].weight.detach().to(torch.float64)
        update = b @ a
    return update.T if getattr(module, "fan_in_fan_out", False) else update


def _torch_layers(model: Any, mode: str, copy: bool, snapshot_torch: Any) -> list[LayerWeights]:
    from .torch import module_ids

    ids = module_ids(model)
    lora = dict(_torch_lora_modules(model))
    if mode == "adapters":
        found = []
        for path, module in lora.items():
            for adapter in module.lora_A:
                a, b = module.lora_A[adapter].weight, module.lora_B[adapter].weight
                prefix = f"{path}.lora_BA.{adapter}"
                lw = dense_layer(
                    _torch_update(module, adapter),
                    name=adapter,
                    longname=prefix,
                    layer_id=ids.get(f"{path}.lora_A.{adapter}", ids.get(path, -1)),
                    copy=False,  # a new tensor already
                    extra={
                        "version": tensor_version(a, b),
                        "peft": "adapters",
                        "factors": _factors(module, adapter),
                    },
                )
                found.append(_with_rank(lw, int(min(a.shape))))
        return found
    # effective: the model's own layers, each LoRA layer (a module whose ``weight`` is its base layer's, so the
    # snapshot already has it under its own name) with one effective weight; its pieces left out
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    by_name = {_strip(path): module for path, module in lora.items()}
    pieces = tuple(f"{name}.{part}" for name in by_name for part in ("lora_A", "lora_B", "base_layer"))
    effective: dict[str, LayerWeights] = {}
    for lw in snapshot_torch(base, copy=copy):
        name = lw.longname.removesuffix(".base_layer")
        if name in by_name and name not in effective:
            effective[name] = _effective_torch(lw, by_name[name], name)
        elif not lw.longname.startswith(pieces) and lw.longname not in by_name:
            effective[lw.longname] = lw
    return list(effective.values())


def _strip(path: str) -> str:
    """A PEFT path without the ``base_model.model.`` wrapper prefix (the name in the model without adapters)."""
    return path.removeprefix("base_model.model.")


def _effective_torch(lw: LayerWeights, module: Any, name: str) -> LayerWeights:
    import torch

    weight = module.base_layer.weight
    with torch.no_grad():
        effective = weight.detach().to(torch.float64).clone()
        tensors = [weight]
        if not getattr(module, "disable_adapters", False) and not getattr(module, "merged", False):
            for adapter in module.active_adapters:
                if adapter in module.lora_A:
                    effective += module.scaling[adapter] * _torch_update(module, adapter).to(effective.device)
                    tensors += [module.lora_A[adapter].weight, module.lora_B[adapter].weight]
    out = dense_layer(
        effective,
        name=name.rsplit(".", 1)[-1],
        longname=name,
        layer_id=lw.layer_id,
        copy=False,
        module_type=lw.module_type,
        extra={**lw.extra, "version": tensor_version(*tensors), "peft": "effective"},
    )
    return out


def _keras_layers(model: Any, mode: str, copy: bool, snapshot_keras: Any) -> list[LayerWeights]:
    import keras

    lora = {id(layer): layer for layer in _keras_lora_layers(model)}
    found = []
    for lw in snapshot_keras(model, copy=copy):
        layer = next((candidate for candidate in lora.values() if candidate.name == lw.name), None)
        if layer is None:
            if mode == "effective":
                found.append(lw)  # the kernel Keras reads is already W + (alpha / rank) A @ B
            continue
        if mode == "effective":
            found.append(lw)
            continue
        a = np.asarray(keras.ops.convert_to_numpy(layer.lora_kernel_a), dtype=np.float64)
        b = np.asarray(keras.ops.convert_to_numpy(layer.lora_kernel_b), dtype=np.float64)
        update = dense_layer(
            a @ b,  # Keras' kernel orientation (in x out), as the kernel itself is analyzed
            name=f"{lw.name}.lora_BA",
            longname=f"{lw.longname}.lora_BA",
            layer_id=lw.layer_id,
            copy=False,
            extra={"peft": "adapters", "factors": (a, b)},
        )
        found.append(_with_rank(update, int(layer.lora_rank)))
    return found


def _with_rank(lw: LayerWeights, rank: int) -> LayerWeights:
    import dataclasses

    return dataclasses.replace(lw, rank=rank, ww_parity=True)


def peft_layers(model: Any, mode: str, *, copy: bool) -> list[LayerWeights]:
    """The layers of a model with LoRA layers in ``mode`` (``"adapters"`` or ``"effective"``).

    Example:
        >>> import torch
        >>> peft_layers(torch.nn.Linear(20, 30), "effective", copy=False)[0].longname
        'Linear'
    """
    if hasattr(model, "_flatten_layers"):
        from .keras import snapshot_keras

        return _keras_layers(model, mode, copy, snapshot_keras)
    from .torch import snapshot_torch

    return _torch_layers(model, mode, copy, snapshot_torch)
