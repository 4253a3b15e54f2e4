"""Keras ``model.fit`` with ``keras.callbacks.TensorBoard`` (and with ``tensorboard_dir=``): the ESD histograms,
images and end figures land in the TensorBoard run, read back with tensorboard's ``EventAccumulator``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
from _keras_utils import compile_model, make_data, tiny_mlp

from ww_callbacks.keras import WeightWatcherCallback

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

pytestmark = [pytest.mark.keras, pytest.mark.slow]


def _events(directory: Any) -> EventAccumulator:
    acc = EventAccumulator(
        str(directory), size_guidance={"scalars": 0, "histograms": 0, "images": 0, "tensors": 0}
    )
    acc.Reload()
    return acc


def _steps(acc: EventAccumulator, tag: str) -> list[int]:
    """The steps of ``tag``, written by tf.summary (tensors) or by a SummaryWriter (histograms/images/scalars)."""
    tags = acc.Tags()
    for kind, read in (("tensors", acc.Tensors), ("histograms", acc.Histograms), ("images", acc.Images)):
        if tag in tags.get(kind, []):
            return [e.step for e in read(tag)]
    if tag in tags.get("scalars", []):
        return [e.step for e in acc.Scalars(tag)]
    raise AssertionError(f"{tag} not in {tags}")


@pytest.mark.parametrize("ww_first", [True, False])
def test_keras_tensorboard_callback_run_gets_histograms_images_and_figures(tmp_path, ww_first):
    pytest.importorskip("tensorflow")
    x, y = make_data()
    model = compile_model(tiny_mlp())
    ww = WeightWatcherCallback(seed=0, media_every_n_epochs=2)
    tensorboard = keras.callbacks.TensorBoard(log_dir=str(tmp_path / "logs"))
    model.fit(
        x,
        y,
        epochs=3,
        batch_size=16,
        verbose=0,
        callbacks=[ww, tensorboard] if ww_first else [tensorboard, ww],
    )

    train = tmp_path / "logs" / "train"
    assert {p.parent for p in (tmp_path / "logs").rglob("events.out.tfevents.*")} <= {
        train,
        tmp_path / "logs" / "validation",
    }
    acc = _events(train)
    layer = ww.last_report.layers[0].longname
    assert _steps(acc, f"ww/{layer}/esd") == [0, 1, 2]  # Keras' TensorBoard counts epochs
    assert _steps(acc, f"ww/{layer}/esd_plot") == [0, 2]
    assert _steps(acc, "ww/alpha_heatmap") == [2]
    tags = {tag for kind in ("scalars", "tensors") for tag in acc.Tags()[kind]}
    if ww_first:  # Keras' TensorBoard writes the epoch logs that carry our values: not twice
        assert _steps(acc, "epoch_ww/alpha") == [0, 1, 2] and "ww/alpha" not in tags
    else:  # it wrote its logs before ours had the values: the sink writes them
        assert _steps(acc, "ww/alpha") == [0, 1, 2] and "epoch_ww/alpha" not in tags
    assert (train / "history.png").stat().st_size > 0


def test_tensorboard_dir_option_writes_scalars_too(tmp_path):
    x, y = make_data()
    model = compile_model(tiny_mlp())
    ww = WeightWatcherCallback(seed=0, metrics=("alpha",), per_layer=True, tensorboard_dir=tmp_path / "tb")
    model.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[ww])
    acc = _events(tmp_path / "tb")
    layer = ww.last_report.layers[0]
    assert _steps(acc, "ww/alpha") == [0, 1]
    assert _steps(acc, f"ww/{layer.longname}/alpha") == [0, 1]
    assert _steps(acc, f"ww/{layer.longname}/esd") == [0, 1]
    assert sorted(p.name for p in Path(tmp_path / "tb").glob("*.png")) == ["alpha_heatmap.png", "history.png"]
    assert np.isfinite(layer.alpha)
