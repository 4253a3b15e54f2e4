"""End to end: Lightning ``Trainer.fit`` with an offline ``WandbLogger`` and the WeightWatcher callback.

The summary scalars reach W&B through the Lightning logger, the per-layer values, table, histograms and images
through `WandbSink`; both are read back from the run's .wandb file and compared with the callback's state.
"""

from __future__ import annotations

import math

import pytest
import torch
import wandb
from _wandb_reader import read_run
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ww_callbacks.lightning import WeightWatcherCallback
from ww_callbacks.sinks.history import load_history

pytestmark = pytest.mark.slow

EPOCHS = 3


class TinyNet(LightningModule):
    """32 -> 64 -> 16 -> 1 MLP; the 16 -> 1 head has one eigenvalue (status "too-small")."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.net = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 1))
        with torch.no_grad():
            for p in self.net.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.2)
        self.x = torch.randn(128, 32, generator=generator)
        self.y = torch.randn(128, 1, generator=generator)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)

    def train_dataloader(self):
        return DataLoader(TensorDataset(self.x, self.y), batch_size=32)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = tmp_path_factory.mktemp("wandb_lightning")
    logger = WandbLogger(offline=True, save_dir=str(root), project="ww-callbacks-tests")
    ww = WeightWatcherCallback(seed=0, media_every_n_epochs=2, history_path=root / "ww_history.jsonl")
    trainer = Trainer(
        max_epochs=EPOCHS,
        logger=logger,
        callbacks=[ww],
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        log_every_n_steps=1,
    )
    trainer.fit(TinyNet())
    wandb.finish()
    return ww, trainer, read_run(root), load_history(root / "ww_history.jsonl", as_pandas=False)


def test_summary_scalars_through_the_logger_equal_history(fitted):
    ww, trainer, run, _ = fitted
    assert [h["epoch"] for h in ww.history] == list(range(EPOCHS))
    rows = run.rows_with("ww/alpha")
    assert len(rows) == EPOCHS  # once per epoch: the sink does not log the summaries again
    for entry, row in zip(ww.history, rows, strict=True):
        assert row["epoch"] == entry["epoch"]
        for metric in ("alpha", "alpha_weighted", "log_spectral_norm", "rand_distance"):
            # pl_module.log stores a float32 tensor: equal up to float32 rounding.
            assert row[f"ww/{metric}"] == pytest.approx(entry[metric], rel=1e-6), metric
    # the step Lightning's logger used for these epoch-end values: one before the trainer's current step
    assert entry["step"] == row["trainer/global_step"] == trainer.global_step - 1


def test_sink_rows_share_the_trainer_logger_step(fitted):
    _, _, run, _ = fitted
    logger_steps = [r["trainer/global_step"] for r in run.rows_with("ww/alpha")]
    sink_steps = [r["trainer/global_step"] for r in run.rows_with("ww/layers")]
    assert sink_steps == logger_steps


def test_per_layer_values_equal_reports(fitted):
    ww, _, run, history_rows = fitted
    layer_rows = run.rows_with("ww/layers")
    assert [r["trainer/global_step"] for r in layer_rows] == [h["step"] for h in ww.history]
    names = [layer.longname for layer in ww.last_report.layers]
    assert names == ["net.0", "net.2", "net.4"]
    # The last epoch against last_report, exactly (the sink logs Python floats).
    last = layer_rows[-1]
    for layer in ww.last_report.layers:
        for metric in ("alpha", "alpha_weighted", "log_spectral_norm", "rand_distance"):
            value = getattr(layer, metric)
            key = f"ww/{layer.longname}/{metric}"
            if math.isfinite(value):
                assert last[key] == value, key
            else:
                assert key not in last, key
    assert ww.last_report["net.4"].status == "too-small" and "ww/net.4/alpha" not in last
    # Every epoch against the history file written by the same callback.
    for row in history_rows:
        logged = layer_rows[row["epoch"]].get(f"ww/{row['layer']}/alpha")
        assert logged == row["alpha"] if math.isfinite(row["alpha"]) else logged is None
    table = run.load_table(last["ww/layers"])
    assert [r[table["columns"].index("layer")] for r in table["data"]] == names


def test_media_and_metric_definitions(fitted):
    ww, _, run, _ = fitted
    assert run.metric("ww/*")["step_metric"] == "trainer/global_step"
    steps = [h["step"] for h in ww.history]
    image_rows = run.rows_with("ww/net.0/esd_plot")
    assert [r["trainer/global_step"] for r in image_rows] == [steps[0], steps[2]]  # first, then every 2nd
    for row in image_rows:
        assert run.media_path(row["ww/net.0/esd_plot"]).read_bytes()[:4] == b"\x89PNG"
    esd = run.rows_with("ww/net.0/esd")
    assert len(esd) == EPOCHS and all(len(r["ww/net.0/esd"]["values"]) <= 512 for r in esd)
    (final,) = run.rows_with("ww/alpha_heatmap")
    assert "ww/summary_plot" in final and final["trainer/global_step"] == steps[-1]


def test_last_epoch_media_only_when_training_really_ends(tmp_path):
    # The rule fires from the first epoch on, but min_epochs=3 keeps training going until epoch 2: only then
    # is the report the last one. Images: the first analysis, then the last (media spacing is larger).
    from ww_callbacks.stopping import AlphaBelow

    logger = WandbLogger(offline=True, save_dir=str(tmp_path), project="ww-callbacks-tests")
    ww = WeightWatcherCallback(
        seed=0, randomize=False, media_every_n_epochs=10, early_stopping=AlphaBelow(threshold=100.0)
    )
    trainer = Trainer(
        min_epochs=3,
        max_epochs=8,
        logger=logger,
        callbacks=[ww],
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        log_every_n_steps=1,
    )
    trainer.fit(TinyNet())
    wandb.finish()
    assert ww.stopped_epoch == 2 and [h["epoch"] for h in ww.history] == [0, 1, 2]
    steps = [h["step"] for h in ww.history]
    image_rows = read_run(tmp_path).rows_with("ww/net.0/esd_plot")
    assert [r["trainer/global_step"] for r in image_rows] == [steps[0], steps[2]]
