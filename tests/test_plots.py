"""ww_callbacks.plots: figures render to valid PNGs, show what they claim, and leave no pyplot figure open."""

from __future__ import annotations

import importlib
import struct
import sys

import matplotlib
import numpy as np
import pytest
from _sinks_utils import LAYERS, training_like_reports

from ww_callbacks import LayerResult
from ww_callbacks.plots import ALPHA_BAND_GID, plot_alpha_heatmap, plot_esd, plot_history
from ww_callbacks.sinks.history import HistoryWriter, load_history

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)


@pytest.fixture(scope="module")
def reports():
    return training_like_reports(4, mp_fit=True)


@pytest.fixture(scope="module")
def history_file(tmp_path_factory, reports):
    path = tmp_path_factory.mktemp("history") / "ww_history.jsonl"
    with HistoryWriter(path) as writer:
        for epoch, report in enumerate(reports):
            writer.write(report, epoch=epoch, step=10 * epoch)
    return path


@pytest.fixture(autouse=True)
def no_figures_left_open():
    before = plt.get_fignums()
    yield
    assert plt.get_fignums() == before


def _save_png(fig, path) -> tuple[int, int]:
    """Save, check the PNG signature and size, return (width, height)."""
    fig.savefig(path)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 10_000, len(data)  # an empty canvas is a few kB
    width, height = struct.unpack(">II", data[16:24])  # IHDR
    assert width >= 300 and height >= 200
    return width, height


def _line(ax, prefix):
    found = [line for line in ax.get_lines() if str(line.get_label()).startswith(prefix)]
    assert len(found) == 1, [line.get_label() for line in ax.get_lines()]
    return found[0]


def test_plot_esd_shows_fit_random_esd_xmin_and_bulk_edge(tmp_path, reports):
    layer = reports[3]["encoder.fc1"]
    assert layer.ok and np.isfinite(layer.bulk_max)
    fig = plot_esd(layer)
    _save_png(fig, tmp_path / "esd.png")
    (ax,) = fig.axes
    assert ax.get_xscale() == ax.get_yscale() == "log"
    # The fitted line has slope -alpha on log-log axes and starts at xmin.
    x, y = _line(ax, "power law").get_data()
    slope = np.polyfit(np.log10(x), np.log10(y), 1)[0]
    assert slope == pytest.approx(-layer.alpha, rel=1e-9)
    assert x[0] == pytest.approx(layer.xmin)
    assert _line(ax, "xmin").get_xdata()[0] == pytest.approx(layer.xmin)
    assert _line(ax, "MP bulk edge").get_xdata()[0] == pytest.approx(layer.bulk_max)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(label.startswith("randomized ESD") for label in labels)
    assert any(label.startswith(f"ESD ({len(layer.evals)} eigenvalues") for label in labels)
    # The histogram is a density over the eigenvalues: its integral is 1.
    stairs = [p for p in ax.patches if p.get_label().startswith("ESD")][0]
    values, edges, _ = stairs.get_data()
    assert float(np.sum(values * np.diff(edges))) == pytest.approx(1.0)


def test_plot_esd_into_given_axes_and_degenerate_layers(tmp_path, reports):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4))
    left, right = fig.subplots(1, 2)
    assert plot_esd(reports[0]["encoder.fc2"], ax=left) is fig
    # The exactly rank-1 "head" layer (ones): its 19 zero eigenvalues, whatever rounding made of them on this
    # BLAS kernel (tiny positive or clipped to 0), are left out; the failed fit draws no power law.
    assert plot_esd(reports[0]["head"], ax=right) is fig
    assert not [line for line in right.get_lines() if str(line.get_label()).startswith("power law")]
    assert "ESD (1 eigenvalue, 19 ≈ 0 left out)" in [t.get_text() for t in right.get_legend().get_texts()]
    assert "[failed]" in right.get_title()
    _save_png(fig, tmp_path / "two.png")
    empty = LayerResult(layer_id=0, name="skipped", longname="skipped", layer_type="dense", N=5, M=2)
    empty.status = "too-small"
    fig = plot_esd(empty)
    assert "no eigenvalues (too-small)" in fig.axes[0].texts[0].get_text()


def test_plot_esd_counts_exact_zeros_and_rounding_noise_alike():
    """What one BLAS kernel rounds to tiny positive eigenvalues another clips to 0: the plot is the same."""
    layer = LayerResult(layer_id=0, name="low", longname="low", layer_type="dense", N=30, M=20)
    layer.status = "failed"
    signal = np.array([2.0, 50.0, 600.0])
    noise = np.array([1e-30, 3e-17, 2e-14, 0.0, 0.0, 5e-15])  # all below 30·ε·600 ≈ 4e-12
    labels = []
    for zeros in (np.zeros(noise.size), noise, np.sort(noise)[::-1] * 1.5):
        layer.evals = np.sort(np.concatenate([zeros, signal]))
        fig = plot_esd(layer)
        labels.append([t.get_text() for t in fig.axes[0].get_legend().get_texts()])
        (stairs,) = [p for p in fig.axes[0].patches if p.get_label().startswith("ESD")]
        assert stairs.get_data().edges[0] >= signal.min() / 2  # the axis starts near the signal, not at 1e-30
    assert labels[0] == labels[1] == labels[2] == ["ESD (3 eigenvalues, 6 ≈ 0 left out)"]


def _alpha_band(ax):
    bands = [p for p in ax.patches if p.get_gid() == ALPHA_BAND_GID]
    assert len(bands) == 1
    return bands[0]


def test_plot_history_from_epoch_summaries(tmp_path, reports):
    history = [{"epoch": e, "step": 10 * e, **r.summary} for e, r in enumerate(reports)]
    fig = plot_history(history)
    _save_png(fig, tmp_path / "history.png")
    by_metric = {ax.get_ylabel(): ax for ax in fig.axes}
    assert list(by_metric) == ["alpha", "alpha_weighted", "log_spectral_norm", "rand_distance"]
    band = _alpha_band(by_metric["alpha"])
    assert (band.get_y(), band.get_y() + band.get_height()) == (2.0, 6.0)
    for metric, ax in by_metric.items():
        x, y = _line(ax, "mean over layers").get_data()
        assert list(x) == [0, 1, 2, 3]
        assert list(y) == pytest.approx([r.summary[metric] for r in reports])
        if metric != "alpha":
            assert not [p for p in ax.patches if p.get_gid() == ALPHA_BAND_GID]
    fig = plot_history(history, metrics=["log_norm"])
    assert [ax.get_ylabel() for ax in fig.axes] == ["log_norm"]
    with pytest.raises(KeyError, match="no_such_metric"):
        plot_history(history, metrics=["no_such_metric"])
    with pytest.raises(ValueError, match="empty"):
        plot_history([])


def test_plot_history_from_history_file_draws_layers_and_mean(tmp_path, history_file, reports):
    df = load_history(history_file, as_pandas=True)
    fig = plot_history(df, metrics=["alpha", "stable_rank"])
    _save_png(fig, tmp_path / "history_layers.png")
    assert len(fig.axes) == 2
    alpha_ax = fig.axes[0]
    _alpha_band(alpha_ax)
    _, mean = _line(alpha_ax, "mean over layers").get_data()
    assert list(mean) == pytest.approx([r.summary["alpha"] for r in reports])
    # One thin line per layer (the failed "head" layer is all NaN but still drawn as a gap).
    assert len(alpha_ax.get_lines()) == 1 + len(LAYERS)


def test_plot_alpha_heatmap(tmp_path, history_file, reports):
    rows = load_history(history_file, as_pandas=False)
    fig = plot_alpha_heatmap(rows)
    _save_png(fig, tmp_path / "heatmap.png")
    heat_ax, colorbar_ax = fig.axes
    assert [t.get_text() for t in heat_ax.get_yticklabels()] == list(LAYERS)
    assert [t.get_text() for t in heat_ax.get_xticklabels()] == ["0", "1", "2", "3"]
    grid = heat_ax.get_images()[0].get_array()
    assert grid.shape == (len(LAYERS), len(reports))
    for j, report in enumerate(reports):
        for i, name in enumerate(LAYERS):
            if report[name].ok:
                assert grid[i, j] == pytest.approx(report[name].alpha)
            else:
                assert grid.mask[i, j]
    assert "failed" in [t.get_text() for t in heat_ax.texts]
    assert colorbar_ax.get_ylabel() == "alpha"
    with pytest.raises(ValueError, match="per-layer rows"):
        plot_alpha_heatmap([{"epoch": 0, "alpha": 3.0}])


def test_clear_error_without_matplotlib(monkeypatch):
    for name in list(sys.modules):
        if name == "matplotlib" or name.startswith("matplotlib."):
            monkeypatch.setitem(sys.modules, name, None)  # import now raises ImportError
    monkeypatch.delitem(sys.modules, "ww_callbacks.plots")  # restored afterwards
    with pytest.raises(ImportError, match=r"pip install 'ww-callbacks\[plot\]'"):
        importlib.import_module("ww_callbacks.plots")
