"""The names a transformers model gives the tensors of its saved directory, so that a directory is analyzed under
the layer names, ids and order of the model in memory.

transformers 5 renames some modules on load (a ViT holds ``vit.layers.0.attention.q_proj`` in memory and saves it
as ``vit.encoder.layer.0.attention.attention.query``). `model_layout` asks transformers itself: it builds the
model's skeleton on the ``meta`` device from ``config.json`` (no weights, no memory, never remote code), renames
each saved key with transformers' own conversion mapping, and orders the layers as `ww_callbacks.snapshot` walks
the modules of the model. Keys that transformers converts on load (fused or split tensors) keep their
saved names. Without ``config.json``, transformers or a known architecture the directory keeps its saved names.

Example:
    >>> import tempfile
    >>> model_layout(tempfile.mkdtemp(), ["fc.weight"]) is None  # no config.json: names stay as saved
    True
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["model_layout"]

log = logging.getLogger(__name__)


def model_layout(directory: str | Path, keys: Sequence[str]) -> dict[str, tuple[str, int]] | None:
    """saved key -> (the model's own name for it, the position of its module in the model: weightwatcher's layer
    id), for the keys transformers renames or keeps; None when the directory is not one transformers can describe
    (then names stay as saved)."""
    directory = Path(directory)
    if not (directory / "config.json").is_file():
        return None
    try:
        import torch
        import transformers
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key
    except ImportError:
        return None
    try:
        model = _skeleton(directory, transformers, torch)
        transforms = get_model_conversion_mapping(model)
        renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
        converters = [t for t in transforms if isinstance(t, WeightConverter)]
        own = dict.fromkeys(model.state_dict(), True)  # rename_source_key asks .get(key) is not None
        prefix = getattr(model, "base_model_prefix", None) or None
        ids = _module_ids(model)
        layout = {}
        for key in keys:
            name, converted = rename_source_key(key, renamings, converters, prefix, own)
            module = name.rpartition(".")[0]
            if converted is None and name in own and module in ids:
                layout[key] = (name, ids[module])
    except Exception as exc:  # an architecture transformers cannot build here: the saved names it is
        log.debug(
            "%s: no transformers layout (%s: %s); layers keep their saved names",
            directory,
            type(exc).__name__,
            exc,
        )
        return None
    return layout


def _skeleton(directory: Path, transformers: Any, torch: Any) -> Any:
    """The model of ``directory``'s ``config.json`` on the meta device: its modules and names, no weights."""
    config = transformers.AutoConfig.from_pretrained(str(directory))  # the local file; never remote code
    architecture = (getattr(config, "architectures", None) or [None])[0]
    model_class = getattr(transformers, architecture, None) if architecture else None
    with torch.device("meta"):
        if model_class is not None:
            return model_class(config)
        return transformers.AutoModel.from_config(config)


def _module_ids(model: Any) -> dict[str, int]:
    """weightwatcher's layer id of every module path (the order `ww_callbacks.snapshot` walks the model in)."""
    from ..layers.torch import module_ids

    return module_ids(model)
