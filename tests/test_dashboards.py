"""TensorBoard and MLflow get the pictures: real fits (Lightning, Hugging Face Trainer, Keras), event files read
back with tensorboard's ``EventAccumulator`` and MLflow stores (``sqlite:///``) read back with ``MlflowClient``;
media computed once per analysis for every sink; step-scheduled histories plot on steps."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _lightning_utils import make_model, make_trainer, namespace_modules
from _sinks_utils import training_like_reports

import ww_callbacks
from ww_callbacks.plots import history_x_axis, plot_alpha_heatmap, plot_history
from ww_callbacks.sinks import media as media_module
from ww_callbacks.sinks.lifecycle import RunSinks
from ww_callbacks.spectral.zeros import split_zeros

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

LAYERS = ("fc1", "fc2")


def _events(directory: Any) -> EventAccumulator:
    acc = EventAccumulator(
        str(directory), size_guidance={"scalars": 0, "histograms": 0, "images": 0, "tensors": 0}
    )
    acc.Reload()
    return acc


def _event_dirs(root: Path) -> set[Path]:
    return {p.parent for p in root.rglob("events.out.tfevents.*")}


def _positive_log10(layer: Any) -> np.ndarray:
    evals, _ = split_zeros(layer.evals, layer.N, layer.M)
    return np.log10(evals)


# ---------------------------------------------------------------------- Lightning + TensorBoardLogger
@pytest.mark.parametrize("namespace", ["lightning.pytorch", "pytorch_lightning"])
def test_lightning_tensorboard_logger_gets_histograms_images_and_end_figures(namespace, tmp_path):
    pl, mod = namespace_modules(namespace)
    ww = mod.WeightWatcherCallback(per_layer=True, seed=0, media_every_n_epochs=2)
    logger = pl.loggers.TensorBoardLogger(tmp_path, name="tb")
    trainer = make_trainer(namespace, tmp_path, max_epochs=4, callbacks=[ww], logger=logger)
    trainer.fit(make_model(namespace))

    assert _event_dirs(tmp_path) == {Path(logger.log_dir)}  # the logger's run, no second one
    acc = _events(logger.log_dir)
    steps = [h["step"] for h in ww.history]
    assert len(steps) == 4
    # the scalars came through the logger, at the same steps as the histograms
    assert [e.step for e in acc.Scalars("ww/alpha")] == steps
    for layer in LAYERS:
        histograms = acc.Histograms(f"ww/{layer}/esd")
        assert [h.step for h in histograms] == steps
        last = histograms[-1].histogram_value
        values = _positive_log10(ww.last_report[layer])
        assert last.num == values.size and sum(last.bucket) == values.size
        assert last.min == pytest.approx(values.min()) and last.max == pytest.approx(values.max())
        # ESD images on the first analysis, every 2 epochs, and the last
        images = acc.Images(f"ww/{layer}/esd_plot")
        assert [i.step for i in images] == [steps[0], steps[2], steps[3]]
        assert images[0].width > 100 and images[0].encoded_image_string.startswith(b"\x89PNG")
    assert [i.step for i in acc.Images("ww/alpha_heatmap")] == [steps[-1]]
    assert [i.step for i in acc.Images("ww/summary_plot")] == [steps[-1]]
    # the artifacts beside the event files
    for name in ("history.png", "alpha_heatmap.png", "ww_history.jsonl"):
        assert (Path(logger.log_dir) / name).stat().st_size > 0


def test_log_dashboards_false_writes_no_media(tmp_path):
    pl, mod = namespace_modules("lightning.pytorch")
    ww = mod.WeightWatcherCallback(seed=0, log_dashboards=False)
    logger = pl.loggers.TensorBoardLogger(tmp_path, name="tb")
    make_trainer("lightning.pytorch", tmp_path, max_epochs=2, callbacks=[ww], logger=logger).fit(make_model())
    acc = _events(logger.log_dir)
    assert "ww/alpha" in acc.Tags()["scalars"]
    assert acc.Tags()["histograms"] == [] and acc.Tags()["images"] == []
    assert not (Path(logger.log_dir) / "history.png").exists()


def test_step_schedule_histograms_at_steps_and_step_axis_figures(tmp_path):
    pl, mod = namespace_modules("lightning.pytorch")
    ww = mod.WeightWatcherCallback(seed=0, every_n_train_steps=2, metrics=("alpha",))
    logger = pl.loggers.TensorBoardLogger(tmp_path, name="tb")
    make_trainer("lightning.pytorch", tmp_path, max_epochs=2, callbacks=[ww], logger=logger).fit(make_model())
    steps = [h["step"] for h in ww.history]
    epochs = [h["epoch"] for h in ww.history]
    assert len(set(epochs)) < len(epochs)  # several analyses per epoch
    acc = _events(logger.log_dir)
    assert [h.step for h in acc.Histograms("ww/fc1/esd")] == steps

    rows = ww_callbacks.load_history(Path(logger.log_dir) / "ww_history.jsonl", as_pandas=False)
    assert history_x_axis(rows) == "step"
    fig = plot_history(rows)
    assert fig.axes[0].get_xlabel() == "step"
    assert list(fig.axes[0].lines[-1].get_xdata()) == steps  # the mean line, one point per analysis
    heat = plot_alpha_heatmap(rows)
    assert heat.axes[0].get_xlabel() == "step"
    assert [t.get_text() for t in heat.axes[0].get_xticklabels()] == [str(s) for s in steps]
    # epochs stay the axis of an epoch schedule, and either can be asked for
    per_epoch = [{**r, "step": 10 * r["epoch"] + 9} for r in rows if r["step"] in (steps[0], steps[-1])]
    assert plot_history(per_epoch).axes[0].get_xlabel() == "epoch"
    assert plot_history(rows, x="epoch").axes[0].get_xlabel() == "epoch"
    with pytest.raises(ValueError, match="x must be one of"):
        plot_history(rows, x="time")


def test_cli_history_plots_on_steps(tmp_path, capsys):
    from ww_callbacks.cli import main

    reports = training_like_reports(3)
    path = tmp_path / "h.jsonl"
    from ww_callbacks.sinks.history import HistoryWriter

    with HistoryWriter(path) as writer:
        for i, report in enumerate(reports):
            writer.write(report, epoch=0, step=4 * i + 3)
    captured: dict[str, Any] = {}
    original = plot_history

    def spy(*args: Any, **kwargs: Any) -> Any:
        captured["fig"] = original(*args, **kwargs)
        return captured["fig"]

    import ww_callbacks.plots as plots

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plots, "plot_history", spy)
        assert main(["history", str(path), "--plot", str(tmp_path / "h.png")]) == 0
    assert captured["fig"].axes[0].get_xlabel() == "step"
    assert list(captured["fig"].axes[0].lines[-1].get_xdata()) == [3, 7, 11]


# ---------------------------------------------------------------------- one cost rule
def test_media_computed_once_per_analysis_for_every_sink(tmp_path, monkeypatch):
    """W&B and two TensorBoard runs open: each ESD image is drawn once and each histogram binned once."""
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    from ww_callbacks import plots
    from ww_callbacks.sinks.discover import Dashboard

    drawn: list[str] = []
    binned: list[int] = []
    real_plot_esd, real_histogram = plots.plot_esd, media_module._histogram
    monkeypatch.setattr(
        plots, "plot_esd", lambda layer, *a, **k: drawn.append(layer.longname) or real_plot_esd(layer)
    )
    monkeypatch.setattr(media_module, "_histogram", lambda v, *a: binned.append(v.size) or real_histogram(v))

    run = wandb.init(dir=str(tmp_path), project="ww-media")
    try:
        sinks = RunSinks(warn=pytest.fail)
        dashboards = [Dashboard("tensorboard", False, log_dir=str(tmp_path / d)) for d in ("a", "b")]
        sinks.open(history_path=None, wandb_run=run, dashboards=dashboards, media_every_n_epochs=0)
        reports = training_like_reports(2)
        sinks.emit(reports[0], epoch=0, step=0, is_last=False)
        sinks.emit(reports[1], epoch=1, step=1, is_last=True)
        sinks.close()
    finally:
        run.finish()
    with_evals = [layer for layer in reports[0].layers if layer.evals is not None]
    assert drawn == []  # media_every_n_epochs=0: no images anywhere
    assert len(binned) == 2 * len(with_evals)  # once per layer per analysis, for three sinks
    for d in ("a", "b"):
        assert len(_events(tmp_path / d).Histograms("ww/encoder.fc1/esd")) == 2

    drawn.clear()
    sinks = RunSinks(warn=pytest.fail)
    sinks.open(history_path=None, wandb_run=None, dashboards=dashboards, media_every_n_epochs=None)
    sinks.emit(reports[0], epoch=0, step=0, is_last=True)
    sinks.close()
    assert sorted(drawn) == sorted(layer.longname for layer in with_evals)  # once each for both runs


def test_background_media_drawn_on_the_worker(tmp_path, monkeypatch):
    from ww_callbacks import plots

    threads: list[str] = []
    real = plots.plot_esd
    monkeypatch.setattr(
        plots,
        "plot_esd",
        lambda layer, *a, **k: threads.append(threading.current_thread().name) or real(layer),
    )
    pl, mod = namespace_modules("lightning.pytorch")
    ww = mod.WeightWatcherCallback(seed=0, background=True, metrics=("alpha",))
    logger = pl.loggers.TensorBoardLogger(tmp_path, name="tb")
    make_trainer("lightning.pytorch", tmp_path, max_epochs=2, callbacks=[ww], logger=logger).fit(make_model())
    assert threads and threading.main_thread().name not in threads
    assert len(_events(logger.log_dir).Images("ww/fc1/esd_plot")) == 2  # first and last


def test_a_broken_writer_warns_and_training_goes_on(tmp_path):
    from ww_callbacks.sinks.discover import Dashboard

    class Broken:
        log_dir = str(tmp_path)

        def add_histogram_raw(self, *args: Any, **kwargs: Any) -> None:
            raise OSError("disk full")

        add_image = add_scalar = add_histogram_raw

        def flush(self) -> None:
            pass

    warnings: list[str] = []
    sinks = RunSinks(warn=warnings.append)
    sinks.open(history_path=None, wandb_run=None, dashboards=[Dashboard("tensorboard", True, writer=Broken)])
    sinks.emit(training_like_reports(1)[0], epoch=0, step=0, is_last=True)
    sinks.close()
    assert warnings and "TensorBoard failed" in warnings[0] and "disk full" in warnings[0]


# ---------------------------------------------------------------------- MLflow
def _mlflow_client(uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _artifacts(client: Any, run_id: str, path: str) -> list[str]:
    return sorted(Path(a.path).name for a in client.list_artifacts(run_id, path))


@pytest.mark.slow
def test_lightning_mlflow_logger_gets_metrics_images_and_artifacts(tmp_path):
    pytest.importorskip("mlflow")
    pl, mod = namespace_modules("lightning.pytorch")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    logger = pl.loggers.MLFlowLogger(
        experiment_name="ww", tracking_uri=uri, artifact_location=str(tmp_path / "artifacts")
    )
    ww = mod.WeightWatcherCallback(seed=0, history_path=tmp_path / "ww_history.jsonl")
    make_trainer("lightning.pytorch", tmp_path, max_epochs=3, callbacks=[ww], logger=logger).fit(make_model())

    client = _mlflow_client(uri)
    history = client.get_metric_history(logger.run_id, "ww/alpha")
    assert [m.value for m in history] == pytest.approx([h["alpha"] for h in ww.history], rel=1e-6)
    assert [m.step for m in history] == [h["step"] for h in ww.history]
    assert _artifacts(client, logger.run_id, "ww") == ["alpha_heatmap.png", "history.png", "ww_history.jsonl"]
    local = client.download_artifacts(logger.run_id, "ww/ww_history.jsonl", str(tmp_path / "dl"))
    assert Path(local).read_bytes() == (tmp_path / "ww_history.jsonl").read_bytes()
    images = client.list_artifacts(logger.run_id, "images")
    assert any("fc1~esd_plot" in a.path for a in images)  # log_image(key=...) on the first and last analyses


@pytest.mark.slow
def test_active_mlflow_run_gets_scalars_when_nobody_logs_them(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)  # a global (as MLFlowLogger sets): each MLflow test sets its own
    pl, mod = namespace_modules("lightning.pytorch")
    ww = mod.WeightWatcherCallback(seed=0, per_layer=True, history_path=False)
    with mlflow.start_run() as run:  # no MLFlowLogger: the callback's values reach the run only through us
        make_trainer("lightning.pytorch", tmp_path, max_epochs=2, callbacks=[ww]).fit(make_model())
    client = _mlflow_client(uri)
    per_layer = client.get_metric_history(run.info.run_id, "ww/fc2/alpha")
    assert len(per_layer) == 2 and per_layer[-1].value == pytest.approx(ww.last_report["fc2"].alpha, rel=1e-6)
    summary = client.get_metric_history(run.info.run_id, "ww/alpha")
    assert [m.value for m in summary] == pytest.approx([h["alpha"] for h in ww.history], rel=1e-6)
    assert _artifacts(client, run.info.run_id, "ww") == ["alpha_heatmap.png", "history.png"]


# ---------------------------------------------------------------------- Hugging Face Trainer
def _trainer(tmp_path: Path, ww: Any, **args: Any) -> Any:
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from _hf_trainer_utils import TokenData, tiny_gpt2, training_args
    from transformers import Trainer

    arguments = training_args(tmp_path / "out", **args)
    return Trainer(model=tiny_gpt2(), args=arguments, train_dataset=TokenData(), callbacks=[ww])


@pytest.mark.slow
def test_trainer_report_to_tensorboard_gets_histograms_and_end_figures(tmp_path):
    from ww_callbacks.transformers import WeightWatcherCallback

    ww = WeightWatcherCallback(every_n_steps=4, metrics=("alpha",), seed=0)
    _trainer(tmp_path, ww, report_to=["tensorboard"]).train()
    runs = _event_dirs(tmp_path)
    assert len(runs) == 1  # the Trainer's run directory: our end figures join it
    acc = _events(runs.pop())
    steps = [h["step"] for h in ww.history]
    assert steps == [4, 8]
    layer = ww.last_report.layers[0]
    histograms = acc.Histograms(f"ww/{layer.longname}/esd")
    assert [h.step for h in histograms] == steps
    assert histograms[-1].histogram_value.num == _positive_log10(layer).size
    assert [i.step for i in acc.Images(f"ww/{layer.longname}/esd_plot")] == steps  # first and last
    assert [i.step for i in acc.Images("ww/alpha_heatmap")] == [8]
    assert [s.step for s in acc.Scalars("train/ww/alpha")] == steps  # the Trainer's own on_log naming
    assert "ww/alpha" not in acc.Tags()["scalars"]  # not twice


@pytest.mark.slow
def test_trainer_report_to_mlflow_gets_metrics_and_artifacts(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    from ww_callbacks.transformers import WeightWatcherCallback

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.chdir(tmp_path)  # the experiment's default artifact root (./mlruns) goes under tmp_path
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "ww-hf")
    mlflow.set_tracking_uri(uri)  # the Trainer keeps a global URI an earlier test (MLFlowLogger) set
    ww = WeightWatcherCallback(every_n_steps=4, metrics=("alpha",), seed=0, history_path=tmp_path / "h.jsonl")
    _trainer(tmp_path, ww, report_to=["mlflow"]).train()

    client = _mlflow_client(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("ww-hf").experiment_id])
    assert run.info.status == "FINISHED"  # the Trainer ended its run; the artifacts came after
    history = client.get_metric_history(run.info.run_id, "ww/alpha")
    assert [(m.step, m.value) for m in history] == [
        (h["step"], pytest.approx(h["alpha"], rel=1e-6)) for h in ww.history
    ]
    assert _artifacts(client, run.info.run_id, "ww") == ["alpha_heatmap.png", "h.jsonl", "history.png"]
