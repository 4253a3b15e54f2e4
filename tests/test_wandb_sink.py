"""WandbSink against real offline W&B runs, read back from the run's .wandb file."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import wandb
from _sinks_utils import LAYERS, same, training_like_reports
from _wandb_reader import FIRST, LAST, read_run

from ww_callbacks import LayerResult, SpectralReport
from ww_callbacks.sinks.wandb import MAX_HISTOGRAM_BINS, WandbSink
from ww_callbacks.spectral.catalog import SUMMARY_COUNTS

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
BIG_NOTE = "spectral " * 9000  # ~80 kB: one record split over several 32 kB blocks


def _step(epoch: int) -> int:
    return 10 * (epoch + 1)


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """One offline run fed 4 reports the way the Lightning callback does, then read back from disk."""
    reports = training_like_reports(4)
    root = tmp_path_factory.mktemp("wandb_sink")
    run = wandb.init(mode="offline", dir=root, project="ww-callbacks-tests")
    sink = WandbSink(run, media_every_n_epochs=2)
    history = [{"epoch": e, "step": _step(e), **r.summary} for e, r in enumerate(reports)]
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # the sink must not hit any problem here
        for epoch, report in enumerate(reports):
            sink.log_report(report, epoch=epoch, step=_step(epoch), is_last=False)
        # The callback learns afterwards that epoch 3 was the last one: only images may be added.
        sink.log_report(reports[3], epoch=3, step=_step(3), is_last=True)
        sink.finish(history)
        sink.finish(history)  # idempotent
    run.log({"note": BIG_NOTE})
    run.finish()
    return reports, sink, read_run(root)


def test_define_metric_once_per_key(logged):
    _, _, run = logged
    names = [m.get("name") or m.get("glob_name") for m in run.metrics]
    assert len(names) == len(set(names))
    glob = run.metric("ww/*")
    assert glob["step_metric"] == "trainer/global_step" and "name" not in glob
    for key, goal in [("ww/alpha", "min"), ("ww/rand_distance", "max")]:
        assert run.metric(key)["summary"] == {goal: True}
        assert run.metric(key)["step_metric"] == "trainer/global_step"
    for layer in LAYERS:
        assert run.metric(f"ww/{layer}/alpha")["summary"] == {"min": True}
        assert run.metric(f"ww/{layer}/rand_distance")["summary"] == {"max": True}


def test_per_layer_scalars_equal_the_reports(logged):
    reports, _, run = logged
    rows = run.rows_with("ww/layers")
    assert len(rows) == len(reports)  # one row per analyzed epoch, the repeated call added none
    for epoch, (report, row) in enumerate(zip(reports, rows, strict=True)):
        assert row["trainer/global_step"] == _step(epoch)
        for layer in report.layers:
            for metric in report.summary:
                key = f"ww/{layer.longname}/{metric}"
                if metric in SUMMARY_COUNTS:  # counts over layers have no per-layer value
                    assert key not in row
                    continue
                value = getattr(layer, metric)
                if math.isfinite(value):
                    assert row[key] == value, key
                else:
                    assert key not in row, key  # NaN (failed fit) is not logged
        assert "ww/head/alpha" not in row
        # The summary scalars flow through the trainer's logger, not through the sink (log_summary=False).
        assert not [k for k in row if k.count("/") == 1 and k[3:] in report.summary]


def test_table_has_one_row_per_layer_with_every_column(logged):
    reports, _, run = logged
    for epoch, row in enumerate(run.rows_with("ww/layers")):
        table = run.load_table(row["ww/layers"])
        columns = table["columns"]
        assert columns[:3] == ["epoch", "step", "layer"]
        assert {"alpha", "status", "warning", "reason", "rand_distance"} <= set(columns)
        assert len(table["data"]) == len(LAYERS)
        for values, layer in zip(table["data"], reports[epoch].layers, strict=True):
            cells = dict(zip(columns, values, strict=True))
            assert (cells["epoch"], cells["step"], cells["layer"]) == (epoch, _step(epoch), layer.longname)
            for key, expected in layer.to_row().items():
                assert same(cells[key], expected), (layer.longname, key)


def test_histograms_of_log10_eigenvalues(logged):
    reports, _, run = logged
    for epoch, row in enumerate(run.rows_with("ww/layers")):
        for layer in reports[epoch].layers:
            hist = row[f"ww/{layer.longname}/esd"]
            assert hist["_type"] == "histogram"
            counts, bins = np.asarray(hist["values"]), np.asarray(hist["bins"])
            assert 1 <= len(counts) <= MAX_HISTOGRAM_BINS and len(bins) == len(counts) + 1
            # Numerically zero eigenvalues are not in it: the exactly rank-1 "head" (ones) contributes exactly one
            # eigenvalue on every BLAS kernel, the full-rank layers all of theirs.
            expected = 1 if layer.longname == "head" else layer.num_evals
            assert counts.sum() == expected
            lo, hi = np.log10(np.sort(layer.evals)[-expected:][[0, -1]])
            if expected > 1:
                assert (bins[0], bins[-1]) == pytest.approx((lo, hi))
            else:  # numpy widens the range of a single value to ±0.5
                assert (bins[0], bins[-1]) == pytest.approx((lo - 0.5, hi + 0.5))


def test_esd_images_on_first_every_nth_and_last_epoch(logged):
    _, sink, run = logged
    assert sink.media_epochs == [0, 2, 3]
    for layer in LAYERS:
        rows = run.rows_with(f"ww/{layer}/esd_plot")
        assert [r["trainer/global_step"] for r in rows] == [_step(0), _step(2), _step(3)]
        for epoch, r in zip([0, 2, 3], rows, strict=True):
            image = r[f"ww/{layer}/esd_plot"]
            assert image["_type"] == "image-file" and image["caption"].startswith(
                f"{layer}, epoch {epoch} (step "
            )
            assert run.media_path(image).read_bytes()[:8] == PNG_SIGNATURE
            assert image["width"] >= 300 and image["height"] >= 200


def test_finish_logs_heatmap_and_summary_plot_once(logged):
    _, _, run = logged
    (row,) = run.rows_with("ww/alpha_heatmap")
    assert row["trainer/global_step"] == _step(3)
    for key in ("ww/alpha_heatmap", "ww/summary_plot"):
        assert run.media_path(row[key]).read_bytes()[:8] == PNG_SIGNATURE
    assert len(run.rows_with("ww/summary_plot")) == 1


def test_reader_reassembles_records_split_across_blocks(logged):
    _, _, run = logged
    assert run.chunk_counts[FIRST] >= 1 and run.chunk_counts[LAST] >= 1
    assert run.values("note") == [BIG_NOTE]
    assert run.record_types[0] == "header" and "exit" in run.record_types


def _wide_layer_report() -> SpectralReport:
    """A layer whose log-eigenvalues are heavy-tailed over 12 decades: numpy's "auto" rule wants more than 512
    bins (checked here, so the cap is really exercised). None of them is numerically zero."""
    rng = np.random.default_rng(0)
    layer = LayerResult(layer_id=0, name="wide", longname="wide", layer_type="dense", N=100, M=100)
    layer.evals = 10.0 ** np.clip(0.2 * rng.standard_cauchy(100_000), -6, 6)
    assert len(np.histogram_bin_edges(np.log10(layer.evals), bins="auto")) - 1 > MAX_HISTOGRAM_BINS
    layer.alpha = 3.0
    return SpectralReport(layers=[layer], options={"randomize": False})


def test_summary_mode_with_active_run_keras_style(tmp_path):
    reports = training_like_reports(4)
    run = wandb.init(mode="offline", dir=tmp_path, project="ww-callbacks-tests")
    # run=None: the sink uses whatever run is active at each call.
    sink = WandbSink(None, step_metric="epoch", per_layer=False, log_summary=True, media_every_n_epochs=0)
    for epoch in range(3):
        sink.log_report(reports[epoch], epoch=epoch, step=epoch, is_last=epoch == 2)
    sink.log_report(_wide_layer_report(), epoch=3, step=3)
    run.finish()

    # No active run any more: a warning, once, and training goes on.
    with pytest.warns(RuntimeWarning, match="no active W&B run"):
        sink.log_report(reports[3], epoch=4, step=4)
    # A finished run refuses to log (wandb raises): a warning, once.
    dead = WandbSink(run, step_metric="epoch")
    with pytest.warns(RuntimeWarning, match="could not log the spectral report"):
        dead.log_report(reports[3], epoch=4, step=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dead.log_report(reports[3], epoch=5, step=5)
        sink.log_report(reports[3], epoch=5, step=5)

    logged = read_run(tmp_path)
    assert logged.metric("ww/*")["step_metric"] == "epoch"
    assert logged.values("ww/alpha") == [r.summary["alpha"] for r in reports[:3]] + [3.0]
    assert [r["epoch"] for r in logged.rows_with("ww/alpha")] == [0, 1, 2, 3]
    assert logged.values("ww/rand_distance") == [r.summary["rand_distance"] for r in reports[:3]]
    keys = {k for row in logged.history for k in row}
    # per_layer=False: no per-layer scalars (the histograms have their own switch, log_histograms).
    assert {k for k in keys if k.startswith("ww/encoder")} == {"ww/encoder.fc1/esd", "ww/encoder.fc2/esd"}
    assert not [k for k in keys if k.endswith("_plot")]  # media_every_n_epochs=0
    assert sink.media_epochs == []
    wide = logged.values("ww/wide/esd")[0]
    assert len(wide["values"]) == MAX_HISTOGRAM_BINS and sum(wide["values"]) == 100_000


def test_module_imports_without_wandb_and_sink_degrades(tmp_path):
    code = textwrap.dedent(
        """
        import sys, warnings
        import numpy as np
        import ww_callbacks
        import ww_callbacks.sinks.wandb, ww_callbacks.sinks.history
        heavy = ("wandb", "matplotlib", "torch", "keras", "lightning", "tensorflow", "jax", "ww_callbacks.plots")
        loaded = [m for m in heavy if m in sys.modules]
        assert not loaded, loaded
        sys.modules["wandb"] = None  # as if wandb were not installed
        from ww_callbacks.sinks.wandb import WandbSink
        report = ww_callbacks.analyze({"fc.weight": np.random.default_rng(0).normal(size=(40, 20))}, seed=0)
        sink = WandbSink(None)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            sink.log_report(report, epoch=0, step=0)
            sink.log_report(report, epoch=1, step=1)
            sink.finish()
        messages = [str(w.message) for w in caught]
        assert len(messages) == 1 and "wandb is not installed" in messages[0], messages
        print("ok")
        """
    )
    repo = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "ok"
