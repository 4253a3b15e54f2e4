"""The ``ww-callbacks`` command line: each subcommand, each model format, the output options and bad files.

Most tests call `ww_callbacks.cli.main` in-process (fast); a few run ``python -m ww_callbacks`` in a child
process to check the real exit code and that no traceback reaches the user.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from _cli_utils import (
    MLP_SHAPES,
    assert_one_line_error,
    is_png,
    make_keras_model_file,
    make_lightning_checkpoint,
    mlp_weights,
    run_python,
    save_safetensors,
    save_torch,
    torch_state_dict,
)

import ww_callbacks
from ww_callbacks.cli import format_report, format_table, load_weights, main

LAYER_NAMES = [name for name, _, _ in MLP_SHAPES]
DETERMINISTIC = ("alpha", "alpha_weighted", "log_norm", "log_spectral_norm", "stable_rank", "xmin", "D")


def _strict_json(text: str) -> dict:
    def no_constants(name: str) -> None:
        raise AssertionError(f"invalid JSON constant {name}")

    return json.loads(text, parse_constant=no_constants)


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _json_report(capsys: pytest.CaptureFixture[str], path: Path, *extra: str) -> dict:
    code, out, err = _run(capsys, "analyze", path, "--json", *extra)
    assert code == 0, err
    return _strict_json(out)


def _by_name(payload: dict) -> dict[str, dict]:
    return {row["name"]: row for row in payload["layers"]}


@pytest.fixture(scope="module")
def pt_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_torch(tmp_path_factory.mktemp("pt") / "mlp.pt", torch_state_dict(seed=0))


@pytest.fixture(scope="module")
def lightning_ckpt(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    return make_lightning_checkpoint(tmp_path_factory.mktemp("ckpt"), seed=1)


# --------------------------------------------------------------------------------------------- formats


def test_state_dict_table_matches_library(capsys: pytest.CaptureFixture[str], pt_file: Path) -> None:
    code, out, err = _run(capsys, "analyze", pt_file)
    assert code == 0, err
    lines = out.splitlines()
    header = lines[0].split()
    assert header[:3] == ["layer_id", "name", "layer_type"] and "rand_distance" in header
    for name in LAYER_NAMES:
        assert any(line.split()[1:2] == [name] for line in lines[1:4]), out
    assert "summary: mean over the 3 of 3 layers" in out
    # The printed summary alpha is the library's, for the same weights.
    expected = ww_callbacks.analyze(mlp_weights(seed=0), randomize=False).summary["alpha"]
    printed = next(line for line in lines if line.strip().startswith("alpha "))
    assert float(printed.split()[1]) == pytest.approx(expected, abs=5e-5)


def test_json_matches_library_per_layer(capsys: pytest.CaptureFixture[str], pt_file: Path) -> None:
    payload = _json_report(capsys, pt_file)
    expected = ww_callbacks.analyze(mlp_weights(seed=0), randomize=False)
    rows = _by_name(payload)
    assert sorted(rows) == sorted(LAYER_NAMES)
    for layer in expected.layers:
        row = rows[layer.name]
        assert row["status"] == "success" and (row["N"], row["M"]) == (layer.N, layer.M)
        for metric in DETERMINISTIC:
            assert row[metric] == pytest.approx(getattr(layer, metric), rel=1e-9), metric
        assert 0 < row["rand_distance"] < math.sqrt(math.log(2))
    assert payload["num_summarized"] == 3
    assert payload["summary"]["alpha"] == pytest.approx(expected.summary["alpha"], rel=1e-9)
    assert payload["options"]["randomize"] is True and payload["source"] == str(pt_file)


def test_lightning_checkpoint_uses_its_state_dict(
    capsys: pytest.CaptureFixture[str], lightning_ckpt: tuple[Path, dict[str, np.ndarray]]
) -> None:
    path, trained = lightning_ckpt
    payload = _json_report(capsys, path, "--no-randomize")
    weights = {k: v for k, v in trained.items()}
    expected = ww_callbacks.analyze(weights, randomize=False)
    assert [r["longname"] for r in payload["layers"]] == [lr.longname for lr in expected.layers]
    assert len(payload["layers"]) == len(MLP_SHAPES)
    for row, layer in zip(payload["layers"], expected.layers, strict=True):
        assert row["alpha"] == pytest.approx(layer.alpha, rel=1e-9)
    # The checkpoint holds the trained weights, not the initial ones.
    initial = ww_callbacks.analyze(mlp_weights(seed=1), randomize=False)
    assert any(
        row["alpha"] != layer.alpha for row, layer in zip(payload["layers"], initial.layers, strict=True)
    )


def test_safetensors_gives_the_same_numbers_as_the_state_dict(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, pt_file: Path
) -> None:
    st = save_safetensors(tmp_path / "mlp.safetensors", mlp_weights(seed=0))
    from_pt = _by_name(_json_report(capsys, pt_file))
    from_st = _by_name(_json_report(capsys, st))
    for name in LAYER_NAMES:
        for metric in (*DETERMINISTIC, "rand_distance"):  # same weights, same seed, same layer order
            assert from_st[name][metric] == pytest.approx(from_pt[name][metric], rel=1e-9), (name, metric)


def test_bfloat16_safetensors_load_through_torch(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    path = tmp_path / "bf16.safetensors"
    save_file({k: v.to(torch.bfloat16) for k, v in torch_state_dict(seed=0).items()}, str(path))
    payload = _json_report(capsys, path, "--no-randomize")
    assert sorted(_by_name(payload)) == sorted(LAYER_NAMES)
    assert all(math.isfinite(row["alpha"]) for row in payload["layers"])


def test_suffix_is_optional(capsys: pytest.CaptureFixture[str], tmp_path: Path, pt_file: Path) -> None:
    # A torch zip and a safetensors file without a suffix are recognized by their content.
    torch_copy = tmp_path / "weights_torch"
    torch_copy.write_bytes(pt_file.read_bytes())
    st_copy = tmp_path / "weights_st"
    st_copy.write_bytes(save_safetensors(tmp_path / "m.safetensors", mlp_weights(0)).read_bytes())
    for path in (torch_copy, st_copy):
        assert sorted(_by_name(_json_report(capsys, path, "--no-randomize"))) == sorted(LAYER_NAMES)


@pytest.mark.keras
def test_keras_model_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    import keras

    path = make_keras_model_file(tmp_path, seed=0)
    payload = _json_report(capsys, path, "--no-randomize")
    expected = ww_callbacks.analyze(keras.saving.load_model(path, compile=False), randomize=False)
    assert len(payload["layers"]) == len(MLP_SHAPES) == len(expected.layers)
    for row, layer in zip(payload["layers"], expected.layers, strict=True):
        assert row["name"] == layer.name and row["layer_type"] == "dense"
        assert row["alpha"] == pytest.approx(layer.alpha, rel=1e-9)
    # Keras stores the transpose of the torch weights: same singular values, same alpha.
    torch_alpha = {lr.name: lr.alpha for lr in ww_callbacks.analyze(mlp_weights(0), randomize=False).layers}
    for row in payload["layers"]:
        assert row["alpha"] == pytest.approx(torch_alpha[row["name"]], rel=1e-4)


# --------------------------------------------------------------------------------------------- options


def test_json_and_csv_files_keep_the_table(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, pt_file: Path
) -> None:
    json_path, csv_path = tmp_path / "out" / "report.json", tmp_path / "out" / "report.csv"
    code, out, err = _run(capsys, "analyze", pt_file, "--json", json_path, "--csv", csv_path)
    assert code == 0, err
    assert "summary:" in out and f"JSON written to {json_path}" in out and f"CSV written to {csv_path}" in out
    payload = _strict_json(json_path.read_text())
    rows = list(csv.DictReader(csv_path.open()))
    assert [r["name"] for r in rows] == [r["name"] for r in payload["layers"]] and len(rows) == 3
    for row, jrow in zip(rows, payload["layers"], strict=True):
        assert float(row["alpha"]) == pytest.approx(jrow["alpha"], rel=1e-12)
        assert row["status"] == "success"


def test_csv_to_stdout_is_only_csv(capsys: pytest.CaptureFixture[str], pt_file: Path) -> None:
    code, out, err = _run(capsys, "analyze", pt_file, "--csv", "--no-randomize")
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["name"] for r in rows] == LAYER_NAMES
    assert all(r["rand_distance"] == "nan" for r in rows)


def test_json_and_csv_cannot_share_stdout(capsys: pytest.CaptureFixture[str], pt_file: Path) -> None:
    code, out, err = _run(capsys, "analyze", pt_file, "--json", "--csv")
    assert code == 2 and out == ""
    assert "cannot both go to stdout" in assert_one_line_error(err)


def test_layer_selection(capsys: pytest.CaptureFixture[str], pt_file: Path) -> None:
    assert sorted(_by_name(_json_report(capsys, pt_file, "--layers", "fc1,fc3"))) == ["fc1", "fc3"]
    assert sorted(_by_name(_json_report(capsys, pt_file, "--layers=-fc2"))) == ["fc1", "fc3"]
    assert sorted(_by_name(_json_report(capsys, pt_file, "--layers", "fc[12]"))) == ["fc1", "fc2"]
    code, _, err = _run(capsys, "analyze", pt_file, "--layers", "conv2d")
    assert code == 2 and "no analyzable layer matching --layers conv2d" in assert_one_line_error(err)


def test_randomize_and_mp_fit_switches(capsys: pytest.CaptureFixture[str], pt_file: Path) -> None:
    plain = _json_report(capsys, pt_file, "--no-randomize")
    assert all(row["rand_distance"] is None for row in plain["layers"])
    assert "rand_distance" not in plain["summary"] and "mp_softrank" not in plain["summary"]
    code, out, _ = _run(capsys, "analyze", pt_file, "--no-randomize")
    assert code == 0 and "rand_distance" not in out.splitlines()[0]
    mp = _json_report(capsys, pt_file, "--mp-fit", "--no-randomize")
    assert all(row["num_spikes"] is not None and row["num_spikes"] >= 0 for row in mp["layers"])
    assert mp["summary"]["mp_softrank"] is not None and mp["summary"]["mp_softrank"] > 0
    code, out, _ = _run(capsys, "analyze", pt_file, "--mp-fit")
    assert code == 0 and "mp_softrank" in out.splitlines()[0]


def test_seed_makes_rand_distance_reproducible(capsys: pytest.CaptureFixture[str], pt_file: Path) -> None:
    def rand_distances(seed: int) -> list[float]:
        return [row["rand_distance"] for row in _json_report(capsys, pt_file, "--seed", str(seed))["layers"]]

    first = rand_distances(3)
    assert rand_distances(3) == first
    assert rand_distances(4) != first


def test_min_evals_skips_small_layers_with_a_reason(
    capsys: pytest.CaptureFixture[str], pt_file: Path
) -> None:
    code, out, err = _run(capsys, "analyze", pt_file, "--min-evals", "20", "--no-randomize")
    assert code == 0, err
    assert "summary: mean over the 2 of 3 layers" in out
    assert any(line.startswith("fc3: too-small") for line in out.splitlines()), out


def test_esd_plots(capsys: pytest.CaptureFixture[str], tmp_path: Path, pt_file: Path) -> None:
    plots = tmp_path / "plots"
    code, out, err = _run(capsys, "analyze", pt_file, "--plots", plots, "--no-randomize")
    assert code == 0, err
    assert sorted(p.name for p in plots.iterdir()) == sorted(f"{n}.esd.png" for n in LAYER_NAMES)
    assert all(is_png(p) for p in plots.iterdir())
    assert f"3 ESD plots written to {plots}" in out


def test_progress_bar(
    capsys: pytest.CaptureFixture[str], pt_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Captured stderr is not a terminal: "auto" shows nothing, "always" shows the bar.
    code, _, err = _run(capsys, "analyze", pt_file, "--no-randomize")
    assert code == 0 and err == ""
    code, _, err = _run(capsys, "analyze", pt_file, "--no-randomize", "--progress", "always")
    assert code == 0 and "analyzing" in err and "/3 " in err
    # Without tqdm there is no bar and no error.
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    code, _, err = _run(capsys, "analyze", pt_file, "--no-randomize", "--progress", "always")
    assert code == 0 and err == ""


# --------------------------------------------------------------------------------------------- bad input


def _truncate(source: Path, target: Path, fraction: float = 0.5) -> Path:
    data = source.read_bytes()
    target.write_bytes(data[: int(len(data) * fraction)])
    return target


def _bad_files(directory: Path, pt_file: Path) -> dict[str, Path]:
    import torch

    text = directory / "notes.pt"
    text.write_text("these are not weights\n")
    empty = directory / "empty.ckpt"
    empty.write_bytes(b"")
    garbage = directory / "blob"
    garbage.write_bytes(np.random.default_rng(0).integers(1, 255, size=4096, dtype=np.uint8).tobytes())
    st = save_safetensors(directory / "full.safetensors", mlp_weights(0))
    biases_only = save_torch(
        directory / "biases.pt", {"fc1.bias": torch.zeros(8), "norm.weight": torch.ones(8)}
    )
    module = save_torch(directory / "module.pt", torch.nn.Linear(4, 3))
    return {
        "text": text,
        "empty": empty,
        "unknown": garbage,
        "truncated-pt": _truncate(pt_file, directory / "cut.pt"),
        "truncated-safetensors": _truncate(st, directory / "cut.safetensors"),
        "not-safetensors": _truncate(pt_file, directory / "zip.safetensors", 1.0),
        "no-layers": biases_only,
        "pickled-module": module,
        "missing": directory / "missing.pt",
        "directory": directory,
    }


BAD_MESSAGES = {
    "text": "cannot read as a torch checkpoint",
    "empty": "cannot read as a torch checkpoint",
    "unknown": "not a recognized model file",
    "truncated-pt": "cannot read as a torch checkpoint",
    "truncated-safetensors": "cannot read as safetensors",
    "not-safetensors": "cannot read as safetensors",
    "no-layers": "no analyzable layer",
    "pickled-module": "save model.state_dict()",
    "missing": "no such file",
    "directory": "no model weights in this directory",
}


def test_bad_files_give_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, pt_file: Path
) -> None:
    files = _bad_files(tmp_path, pt_file)
    for kind, path in files.items():
        code, out, err = _run(capsys, "analyze", path)
        assert code == 2, kind
        assert out == "", kind
        line = assert_one_line_error(err)
        assert BAD_MESSAGES[kind] in line, (kind, line)
        assert str(path) in line, (kind, line)


@pytest.mark.keras
def test_bad_keras_files(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    good = make_keras_model_file(tmp_path, seed=0)
    not_keras = tmp_path / "notes.keras"
    not_keras.write_text("not a zip")
    other_zip = tmp_path / "other.keras"
    with zipfile.ZipFile(other_zip, "w") as zf:
        zf.writestr("readme.txt", "a zip, but not a Keras model")
    for path in (_truncate(good, tmp_path / "cut.keras"), not_keras, other_zip):
        code, out, err = _run(capsys, "analyze", path)
        assert code == 2 and out == ""
        assert "cannot read as a Keras model" in assert_one_line_error(err)


def test_no_traceback_in_a_real_process(tmp_path: Path, pt_file: Path) -> None:
    files = _bad_files(tmp_path, pt_file)
    for kind in ("truncated-pt", "unknown"):
        result = run_python(["-m", "ww_callbacks", "analyze", str(files[kind])])
        assert result.returncode == 2, result.stderr
        assert result.stdout == ""
        assert BAD_MESSAGES[kind] in assert_one_line_error(result.stderr)


def test_python_dash_m_runs_the_cli(pt_file: Path) -> None:
    result = run_python(["-m", "ww_callbacks", "analyze", str(pt_file), "--json", "--no-randomize"])
    assert result.returncode == 0, result.stderr
    assert len(_strict_json(result.stdout)["layers"]) == 3
    version = run_python(["-m", "ww_callbacks", "--version"])
    assert version.returncode == 0 and version.stdout.strip() == f"ww-callbacks {ww_callbacks.__version__}"


def test_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "analyze" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["analyze"])
    assert exc.value.code == 2


def test_load_weights_reads_nested_state_dicts(tmp_path: Path) -> None:

    nested = save_torch(
        tmp_path / "loop.pt", {"epoch": 3, "model_state_dict": torch_state_dict(0), "lr": 0.1}
    )
    assert sorted(load_weights(nested)) == sorted(mlp_weights(0))


def test_library_and_cli_read_the_same_checkpoint(tmp_path: Path) -> None:
    import torch

    path = save_torch(tmp_path / "loop.pt", {"epoch": 3, "model": torch_state_dict(0), "lr": 0.1})
    from_library = ww_callbacks.analyze(torch.load(path, weights_only=True), seed=0)
    from_file = ww_callbacks.analyze(load_weights(path), seed=0)
    assert [lr.name for lr in from_library] == LAYER_NAMES == [lr.name for lr in from_file]
    for metric in DETERMINISTIC:
        assert [getattr(lr, metric) for lr in from_library] == pytest.approx(
            [getattr(lr, metric) for lr in from_file], rel=1e-12, nan_ok=True
        ), metric


# --------------------------------------------------------------------------------------------- history


@pytest.fixture()
def history_file(tmp_path: Path) -> tuple[Path, list]:
    """A real history file: the same layers analyzed at three 'epochs' as their weights grow heavier tailed."""
    from ww_callbacks.sinks.history import HistoryWriter

    path = tmp_path / "ww_history.jsonl"
    reports = []
    with HistoryWriter(path) as writer:
        for epoch, df in enumerate((30.0, 6.0, 2.5)):
            report = ww_callbacks.analyze(mlp_weights(seed=epoch, df=df), seed=epoch)
            writer.write(report, epoch=epoch, step=10 * (epoch + 1))
            reports.append(report)
    return path, reports


def test_history_table(capsys: pytest.CaptureFixture[str], history_file: tuple[Path, list]) -> None:
    path, reports = history_file
    code, out, err = _run(capsys, "history", path)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["epoch", "step", "num_summarized"] and "rand_distance" in lines[0]
    alpha_col = lines[0].split().index("alpha")
    for epoch, report in enumerate(reports):
        cells = lines[1 + epoch].split()
        assert int(cells[0]) == epoch and int(cells[1]) == 10 * (epoch + 1)
        assert float(cells[alpha_col]) == pytest.approx(report.summary["alpha"], abs=5e-5)
    assert "from epoch 0 to epoch 2:" in out


def test_history_json_and_plots(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, history_file: tuple[Path, list]
) -> None:
    path, reports = history_file
    code, out, err = _run(capsys, "history", path, "--json")
    assert code == 0, err
    epochs = _strict_json(out)
    assert [e["epoch"] for e in epochs] == [0, 1, 2]
    for entry, report in zip(epochs, reports, strict=True):
        assert entry["rand_distance"] == pytest.approx(report.summary["rand_distance"], rel=1e-9)
    plot, heatmap = tmp_path / "history.png", tmp_path / "alpha.png"
    code, out, err = _run(capsys, "history", path, "--plot", plot, "--heatmap", heatmap, "--metrics", "alpha")
    assert code == 0, err
    assert is_png(plot) and is_png(heatmap)
    assert f"history plot written to {plot}" in out
    code, out, err = _run(
        capsys, "history", path, "--plot", tmp_path / "x.png", "--metrics", "no_such_metric"
    )
    assert code == 2 and "cannot plot the history" in assert_one_line_error(err)


def test_bad_history_files(capsys: pytest.CaptureFixture[str], tmp_path: Path, pt_file: Path) -> None:
    not_json = tmp_path / "h1.jsonl"
    not_json.write_text("epoch,alpha\n0,3.1\n1,2.9\n")
    foreign = tmp_path / "h2.jsonl"
    foreign.write_text('{"a": 1}\n')
    empty = tmp_path / "h3.jsonl"
    empty.write_text("")
    for path, message in (
        (not_json, "cannot read as a ww-callbacks history file"),
        (foreign, "cannot read as a ww-callbacks history file"),
        (pt_file, "cannot read as a ww-callbacks history file"),
        (empty, "holds no analysis"),
        (tmp_path / "nope.jsonl", "no such file"),
    ):
        code, out, err = _run(capsys, "history", path)
        assert code == 2 and out == "", path
        assert message in assert_one_line_error(err), path


# --------------------------------------------------------------------------------------------- formatting


def test_format_table_aligns_and_blanks_nan() -> None:
    text = format_table([{"name": "a", "x": 1.5}, {"name": "long", "x": float("nan")}], ["name", "x"])
    lines = text.splitlines()
    assert lines == ["name       x", "a     1.5000", "long       -"]


def test_format_report_lists_skipped_layers() -> None:
    report = ww_callbacks.analyze(
        {"big.weight": mlp_weights(0)["fc1.weight"], "tiny.weight": np.ones((4, 3))}
    )
    text = format_report(report)
    assert "tiny: too-small" in text and "summary: mean over the 1 of 2 layers" in text
