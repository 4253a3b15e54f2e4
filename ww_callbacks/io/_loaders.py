"""The private file loaders of `ww_callbacks.io`: one file (torch, safetensors, Keras) into arrays or a model.

`load_file` recognizes the format (by suffix, else by content) and reads the file safely: torch files with
``weights_only=True``, Keras files in safe mode. `ww_callbacks.io.files.load_weights` (single files and
directories) and `ww_callbacks.io.directory.ModelDirectory` (shards) both read through here. Every failure is a
`WeightsFileError` whose message is one line naming the file.
"""

from __future__ import annotations

import logging
import os
import pickle
import sys
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .._util import first_line
from ..layers.mapping import unwrap_state_dict

__all__ = ["WeightsFileError", "load_file", "load_safetensors", "load_torch", "tensors_to_numpy"]

log = logging.getLogger(__name__)

_TORCH_SUFFIXES = {".ckpt", ".pt", ".pth", ".bin"}
_KERAS_SUFFIXES = {".keras", ".h5", ".hdf5"}
_SAFETENSORS_SUFFIXES = {".safetensors"}


class WeightsFileError(ValueError):
    """A file that does not exist, cannot be read, or holds no weights; the message is one line."""


WeightsFileError.__module__ = "ww_callbacks.io"  # its public home: tracebacks name it there


def _sniff_format(path: Path) -> str | None:
    """Guess the format of a file without a known suffix from its first bytes."""
    with path.open("rb") as fh:
        head = fh.read(16)
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError):
            return None
        if "model.weights.h5" in names or "config.json" in names:
            return "keras"
        if any(n.endswith("data.pkl") for n in names):
            return "torch"
        return None
    if head.startswith(b"\x89HDF"):
        return "keras"
    if head[:1] == b"\x80":  # a pickle protocol marker: torch's legacy format
        return "torch"
    if len(head) >= 9 and head[8:9] == b"{":  # safetensors: u64 header length, then a JSON header
        return "safetensors"
    return None


def _detect_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in _TORCH_SUFFIXES:
        return "torch"
    if suffix in _SAFETENSORS_SUFFIXES:
        return "safetensors"
    if suffix in _KERAS_SUFFIXES:
        return "keras"
    fmt = _sniff_format(path)
    if fmt is None:
        raise WeightsFileError(
            f"{path}: not a recognized model file (expected a .ckpt, .pt, .pth, .safetensors or .keras file)"
        )
    return fmt


def _is_tensor_like(value: Any) -> bool:
    return hasattr(value, "shape") and hasattr(value, "dtype")


def tensors_to_numpy(tensors: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Torch tensors to numpy arrays, so that the numbers do not depend on the file format (the core shuffles
    torch tensors with a torch generator). Dtypes numpy lacks (bfloat16, float8 ...) become float32; tied
    tensors stay tied (one conversion per storage), so the analysis still counts them once."""
    import torch

    converted: dict[tuple[Any, ...], np.ndarray] = {}
    out = {}
    for name, tensor in tensors.items():
        tensor = tensor.detach().cpu()
        key = (tensor.data_ptr(), tuple(tensor.shape), tensor.stride(), tensor.dtype)
        if key not in converted:
            if tensor.is_floating_point() and tensor.dtype not in (
                torch.float16,
                torch.float32,
                torch.float64,
            ):
                converted[key] = tensor.to(torch.float32).numpy()
            else:
                converted[key] = tensor.numpy()
        out[str(name)] = converted[key]
    return out


def _state_dict_of(obj: Any, path: Path) -> dict[str, np.ndarray]:
    if not isinstance(obj, Mapping):
        raise WeightsFileError(f"{path}: holds a {type(obj).__name__}, not a state dict or a checkpoint")
    tensors = unwrap_state_dict(obj)
    return tensors_to_numpy({k: v for k, v in tensors.items() if _is_tensor_like(v)})


def _unpickler_reason(exc: Exception) -> str:
    """The informative line of torch's weights-only error (its first lines are boilerplate)."""
    text = str(exc)
    marker = "WeightsUnpickler error:"
    if marker in text:
        rest = [line.strip() for line in text.split(marker, 1)[1].splitlines() if line.strip()]
        if rest:
            return rest[0]
    return first_line(exc)


def load_torch(path: Path) -> dict[str, Any]:
    try:
        import torch
    except ImportError as exc:
        raise WeightsFileError(f"{path}: reading torch checkpoints needs torch: pip install torch") from exc
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "unsupported global" in str(exc).lower():  # a pickled object, not just garbage
            raise WeightsFileError(
                f"{path}: holds pickled Python objects that safe loading refuses; "
                "save model.state_dict() (or a Lightning checkpoint) instead"
            ) from exc
        raise WeightsFileError(f"{path}: not a torch checkpoint ({_unpickler_reason(exc)})") from exc
    except Exception as exc:  # truncated zips, text files, ...: torch raises many types
        raise WeightsFileError(f"{path}: cannot read as a torch checkpoint ({first_line(exc)})") from exc
    return _state_dict_of(obj, path)


def load_safetensors(path: Path) -> dict[str, Any]:
    try:
        from safetensors import SafetensorError
        from safetensors.numpy import load_file
    except ImportError as exc:
        raise WeightsFileError(
            f"{path}: reading .safetensors files needs safetensors: pip install safetensors"
        ) from exc
    try:
        return dict(load_file(str(path)))
    except (SafetensorError, OSError, ValueError) as exc:  # truncated, not safetensors, unreadable
        raise WeightsFileError(f"{path}: cannot read as safetensors ({first_line(exc)})") from exc
    except TypeError as exc:  # a dtype numpy lacks (bfloat16, float8 ...): torch can read it
        numpy_error = exc
    try:
        from safetensors.torch import load_file as load_torch_file
    except ImportError:
        raise WeightsFileError(
            f"{path}: cannot read as safetensors without torch ({first_line(numpy_error)})"
        ) from numpy_error
    try:
        tensors = load_torch_file(str(path), device="cpu")
    except Exception as exc:
        raise WeightsFileError(f"{path}: cannot read as safetensors ({first_line(exc)})") from exc
    return tensors_to_numpy(tensors)


def _load_keras(path: Path) -> Any:
    # Check the container first: clearer than Keras' message, and no backend import for a bad file.
    if path.suffix.lower() == ".keras" and not zipfile.is_zipfile(path):
        raise WeightsFileError(
            f"{path}: cannot read as a Keras model (not a zip archive: truncated or another format)"
        )
    if path.suffix.lower() in (".h5", ".hdf5"):
        with path.open("rb") as fh:
            if not fh.read(8).startswith(b"\x89HDF"):
                raise WeightsFileError(f"{path}: cannot read as a Keras model (not an HDF5 file)")
    if "tensorflow" not in sys.modules:
        # Only weights are read: TensorFlow's start-up banners would bury the output (users may override).
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    try:
        import keras
    except ImportError as exc:
        raise WeightsFileError(f"{path}: reading Keras models needs keras: pip install keras") from exc
    try:
        return keras.saving.load_model(str(path), compile=False, safe_mode=True)
    except Exception as exc:
        if "safe_mode" in str(exc):  # a Lambda layer or other Python code: never run it
            raise WeightsFileError(
                f"{path}: holds Python code (e.g. a Lambda layer) that Keras' safe mode refuses to load"
            ) from exc  # keras raises ValueError, OSError, BadZipFile, TypeError ... for bad files
        raise WeightsFileError(f"{path}: cannot read as a Keras model ({first_line(exc)})") from exc


def load_file(path: Path) -> Any:
    """The weights in one file: a mapping of names to numpy arrays, or a Keras model."""
    fmt = _detect_format(path)
    log.debug("loading %s as %s", path, fmt)
    if fmt == "torch":
        return load_torch(path)
    if fmt == "safetensors":
        return load_safetensors(path)
    return _load_keras(path)
