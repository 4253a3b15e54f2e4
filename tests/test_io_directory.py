"""Model directories saved by ``save_pretrained``: sharded safetensors and ``.bin`` checkpoints, read layer by layer.

Tiny random-init BERT and GPT-2 configs from ``transformers`` (no download), saved with a small
``max_shard_size`` so that they really are sharded; ``.bin`` shards are written by ``huggingface_hub``'s
``save_torch_state_dict`` (transformers 5 only writes safetensors).
"""

from __future__ import annotations

import gc
import json
import math
import warnings
import weakref
from pathlib import Path

import numpy as np
import pytest

import ww_callbacks
from ww_callbacks.cli import main
from ww_callbacks.io import ModelDirectory, WeightsFileError, load_weights

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
huggingface_hub = pytest.importorskip("huggingface_hub")

from _hf_utils import MODELS, tiny_bert, tiny_gpt2  # noqa: E402

#: Columns that do not depend on the shuffles.
DETERMINISTIC = (
    "N",
    "M",
    "rf",
    "num_evals",
    "status",
    "sv_max",
    "sv_min",
    "rank_loss",
    "weak_rank_loss",
    "lambda_max",
    "alpha",
    "xmin",
    "xmax",
    "D",
    "sigma",
    "num_pl_spikes",
    "norm",
    "log_norm",
    "spectral_norm",
    "log_spectral_norm",
    "alpha_weighted",
    "log_alpha_norm",
    "stable_rank",
    "matrix_rank",
    "entropy",
)


def save_dir(model: torch.nn.Module, directory: Path, fmt: str, shard: str | None = "60KB") -> Path:
    """Save like ``save_pretrained``: safetensors (transformers) or ``.bin`` shards (huggingface_hub)."""
    directory.mkdir(parents=True, exist_ok=True)
    if fmt == "safetensors":
        kwargs = {"max_shard_size": shard} if shard else {}
        model.save_pretrained(directory, **kwargs)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            huggingface_hub.save_torch_state_dict(
                model.state_dict(),
                directory,
                safe_serialization=False,
                max_shard_size=shard or "100GB",
            )
    return directory


def _close(a: object, b: object) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        fa, fb = float(a), float(b)  # type: ignore[arg-type]
        if math.isnan(fa) or math.isnan(fb):
            return math.isnan(fa) and math.isnan(fb)
        return math.isclose(fa, fb, rel_tol=1e-9, abs_tol=1e-300)
    return a == b


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_sharded_directory_matches_the_loaded_model(tmp_path: Path, name: str, fmt: str) -> None:
    model = MODELS[name]()
    directory = save_dir(model, tmp_path / "m", fmt)
    suffix = ".safetensors" if fmt == "safetensors" else ".bin"
    assert len(list(directory.glob(f"*{suffix}"))) >= 3  # really sharded
    report = ww_callbacks.analyze(directory, seed=0)
    reference = ww_callbacks.analyze(model, seed=0)
    ours = {lr.longname: lr for lr in report.layers}
    theirs = {lr.longname: lr for lr in reference.layers}
    # tied weights (GPT-2's lm_head = wte, BERT's decoder = word embeddings) are analyzed once in both
    assert sorted(ours) == sorted(theirs)
    assert len(report) == len(ours)
    # layer names as in the state dict (key without ".weight")
    keys = set(model.state_dict())
    assert all(f"{layer}.weight" in keys for layer in ours)
    for layer, result in ours.items():
        for column in DETERMINISTIC:
            assert _close(getattr(result, column), getattr(theirs[layer], column)), (layer, column)
    assert report.num_summarized == reference.num_summarized > 0
    for metric in ("alpha", "log_norm", "log_spectral_norm", "alpha_weighted", "stable_rank"):
        assert _close(report.summary[metric], reference.summary[metric]), metric


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_streaming_equals_the_fully_loaded_state_dict(tmp_path: Path, fmt: str) -> None:
    directory = save_dir(tiny_gpt2(), tmp_path / "m", fmt)
    streamed = ww_callbacks.analyze(directory, seed=3, mp_fit=True)
    loaded = ww_callbacks.analyze(load_weights(directory), seed=3, mp_fit=True)
    # the same layers in the same order with the same shuffles: every column, randomized ones included
    assert [lr.longname for lr in streamed.layers] == [lr.longname for lr in loaded.layers]
    for ours, theirs in zip(streamed.layers, loaded.layers, strict=True):
        for column, value in ours.to_row().items():
            other = theirs.to_row()[column]
            same = value == other or (isinstance(value, float) and math.isnan(value) and math.isnan(other))
            assert same, (ours.longname, column, value, other)


def test_tied_weights_in_a_bin_shard_are_analyzed_once(tmp_path: Path) -> None:
    model = tiny_gpt2()
    sd = model.state_dict()
    assert sd["lm_head.weight"].data_ptr() == sd["transformer.wte.weight"].data_ptr()
    directory = save_dir(model, tmp_path / "m", "bin")
    index = json.loads((directory / "pytorch_model.bin.index.json").read_text())["weight_map"]
    assert "lm_head.weight" in index  # the file holds both names
    names = [lr.longname for lr in ww_callbacks.analyze(directory, seed=0, randomize=False).layers]
    assert "transformer.wte" in names and "lm_head" not in names


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_single_file_directories(tmp_path: Path, fmt: str) -> None:
    model = tiny_bert()
    directory = save_dir(model, tmp_path / "m", fmt, shard=None)
    single = "model.safetensors" if fmt == "safetensors" else "pytorch_model.bin"
    assert (directory / single).is_file()
    report = ww_callbacks.analyze(directory, seed=0, randomize=False)
    reference = ww_callbacks.analyze(model, seed=0, randomize=False)
    assert sorted(lr.longname for lr in report.layers) == sorted(lr.longname for lr in reference.layers)


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_one_layer_in_memory_at_a_time(tmp_path: Path, fmt: str) -> None:
    directory = save_dir(tiny_gpt2(), tmp_path / "m", fmt)
    alive: list[weakref.ref[np.ndarray]] = []
    count = 0
    for lw in ModelDirectory(directory).iter_layers():
        gc.collect()
        # every layer read before this one is gone once the consumer dropped it
        assert all(ref() is None for ref in alive), count
        alive.append(weakref.ref(lw.matrices))
        count += 1
        del lw
    assert count >= 8


def test_layer_filter_and_ids(tmp_path: Path) -> None:
    model = tiny_gpt2()
    directory = save_dir(model, tmp_path / "m", "safetensors")
    every = ww_callbacks.analyze(directory, randomize=False)
    only = ww_callbacks.analyze(directory, randomize=False, layers="transformer.h.0.*")
    assert [lr.longname for lr in only.layers] == [
        lr.longname for lr in every.layers if lr.longname.startswith("transformer.h.0.")
    ]
    assert {lr.layer_id for lr in only.layers} <= {lr.layer_id for lr in every.layers}
    assert len({lr.layer_id for lr in every.layers}) == len(every)


def test_cli_analyzes_a_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = save_dir(tiny_bert(), tmp_path / "m", "safetensors")
    assert main(["analyze", str(directory), "--json", "-", "--seed", "0"]) == 0
    payload = json.loads(capsys.readouterr().out)
    expected = ww_callbacks.analyze(directory, seed=0)
    assert [row["name"] for row in payload["layers"]] == [lr.name for lr in expected.layers]
    assert _close(payload["summary"]["alpha"], expected.summary["alpha"])
    assert _close(payload["summary"]["rand_distance"], expected.summary["rand_distance"])


# ------------------------------------------------------------------------------------------------ bad input


def _missing_shard(d: Path) -> str:
    shard = sorted(d.glob("model-*.safetensors"))[1]
    shard.unlink()
    return shard.name


def _index_names_missing_file(d: Path) -> str:
    index = d / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    first = next(iter(data["weight_map"]))
    data["weight_map"][first] = "model-00099-of-00099.safetensors"
    index.write_text(json.dumps(data))
    return "model-00099-of-00099.safetensors"


def _index_points_outside(d: Path) -> str:
    (d.parent / "elsewhere.safetensors").write_bytes(b"x")
    index = d / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    first = next(iter(data["weight_map"]))
    data["weight_map"][first] = "../elsewhere.safetensors"
    index.write_text(json.dumps(data))
    return "elsewhere.safetensors"


def _no_weights(d: Path) -> str:
    for f in d.iterdir():
        if f.name != "config.json":
            f.unlink()
    return str(d.name)


def _truncated_safetensors(d: Path) -> str:
    shard = sorted(d.glob("model-*.safetensors"))[-1]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    return shard.name


def _shards_without_index(d: Path) -> str:
    (d / "model.safetensors.index.json").unlink()
    return "model.safetensors.index.json"


def _wrong_shard(d: Path) -> str:
    shards = sorted(d.glob("model-*.safetensors"))
    shards[1].write_bytes(shards[0].read_bytes())  # the second shard replaced by a copy of the first
    return shards[1].name


BAD_SAFETENSORS = {
    "missing shard": _missing_shard,
    "index names a missing file": _index_names_missing_file,
    "index points outside": _index_points_outside,
    "no weights": _no_weights,
    "truncated shard": _truncated_safetensors,
    "shards without index": _shards_without_index,
    "wrong shard": _wrong_shard,
}


@pytest.mark.parametrize("case", sorted(BAD_SAFETENSORS))
def test_bad_safetensors_directories(tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str) -> None:
    directory = save_dir(tiny_gpt2(), tmp_path / "m", "safetensors")
    named = BAD_SAFETENSORS[case](directory)
    with pytest.raises(ValueError, match=named.replace(".", r"\.")):
        ww_callbacks.analyze(directory, seed=0)
    capsys.readouterr()
    assert main(["analyze", str(directory)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and named in lines[0] and "Traceback" not in captured.err, captured.err


def _truncated_bin(d: Path) -> str:
    shard = sorted(d.glob("pytorch_model-*.bin"))[-1]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    return shard.name


def _missing_bin_shard(d: Path) -> str:
    shard = sorted(d.glob("pytorch_model-*.bin"))[0]
    shard.unlink()
    return shard.name


@pytest.mark.parametrize("breaker", [_truncated_bin, _missing_bin_shard])
def test_bad_bin_directories(tmp_path: Path, capsys: pytest.CaptureFixture[str], breaker: object) -> None:
    directory = save_dir(tiny_gpt2(), tmp_path / "m", "bin")
    named = breaker(directory)  # type: ignore[operator]
    with pytest.raises(ValueError, match=named.replace(".", r"\.")):
        ww_callbacks.analyze(directory, seed=0)
    capsys.readouterr()
    assert main(["analyze", str(directory)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and named in err[0], err


def test_errors_are_weights_file_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsFileError, match="no model weights"):
        ModelDirectory(tmp_path / "empty")


def tiny_vit() -> torch.nn.Module:
    """A ViT: transformers 5 holds ``vit.layers.0.attention.q_proj`` in memory and saves it under the older
    ``vit.encoder.layer.0.attention.attention.query``."""
    import transformers

    config = transformers.ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=16,
        patch_size=8,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(2)
        return transformers.ViTForImageClassification(config).eval()


def test_renamed_modules_keep_the_names_and_order_of_the_model(tmp_path: Path) -> None:
    model = tiny_vit()
    directory = save_dir(model, tmp_path / "vit", "safetensors", shard=None)
    from safetensors import safe_open

    with safe_open(str(directory / "model.safetensors"), "np") as handle:
        saved = list(handle.keys())
    assert "vit.encoder.layer.0.attention.attention.query.weight" in saved  # the older names on disk
    reference = ww_callbacks.analyze(model, seed=0)
    for report in (
        ww_callbacks.analyze(directory, seed=0),
        ww_callbacks.analyze(load_weights(directory), seed=0),
    ):
        assert [lr.longname for lr in report.layers] == [lr.longname for lr in reference.layers]
        assert report.layers[1].longname == "vit.layers.0.attention.q_proj"
        for ours, theirs in zip(report.layers, reference.layers, strict=True):
            for column in (*DETERMINISTIC, "rand_distance"):  # the same positions: the same shuffles too
                assert _close(getattr(ours, column), getattr(theirs, column)), (ours.longname, column)
