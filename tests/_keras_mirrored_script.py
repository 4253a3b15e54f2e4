"""Train the same tiny model with and without ``tf.distribute.MirroredStrategy`` and dump what the callback saw.

Run by tests/test_keras_callback.py in a subprocess: TensorFlow's two logical CPU devices must be configured
before TensorFlow initializes, which a shared pytest process cannot guarantee.

Usage: python tests/_keras_mirrored_script.py OUT.json
"""

from __future__ import annotations

import json
import os
import sys
import threading

os.environ["KERAS_BACKEND"] = "tensorflow"
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf  # noqa: E402

_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    _cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
)

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _keras_utils import compile_model, make_data, tiny_mlp  # noqa: E402

from ww_callbacks.keras import WeightWatcherCallback  # noqa: E402

EPOCHS = 3


class CountingCallback(WeightWatcherCallback):
    """Records every on_epoch_end call: its thread and the kind of variable it reads."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.calls: list[dict] = []

    def on_epoch_end(self, epoch, logs=None):
        kernel = self.model.get_layer("hidden0").kernel
        self.calls.append(
            {
                "epoch": int(epoch),
                "main_thread": threading.current_thread() is threading.main_thread(),
                "variable": type(getattr(kernel, "value", kernel)).__name__,
            }
        )
        super().on_epoch_end(epoch, logs)


def train(strategy: tf.distribute.Strategy | None) -> dict:
    x, y = make_data(n=64)
    scope = strategy.scope() if strategy is not None else None
    if scope is not None:
        scope.__enter__()
    try:
        model = compile_model(tiny_mlp(seed=0), lr=0.05)
    finally:
        if scope is not None:
            scope.__exit__(None, None, None)
    ww = CountingCallback(seed=0, per_layer=True)
    history = model.fit(x, y, epochs=EPOCHS, batch_size=16, shuffle=False, verbose=0, callbacks=[ww])
    return {
        "replicas": 1 if strategy is None else int(strategy.num_replicas_in_sync),
        "calls": ww.calls,
        "ww_history": ww.history,
        "logs": {k: [float(v) for v in vals] for k, vals in history.history.items()},
        "weights": [np.asarray(w).tolist() for w in model.get_weights()],
    }


def main() -> None:
    out = sys.argv[1]
    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    single = train(None)
    mirrored = train(tf.distribute.MirroredStrategy(devices[:2]))
    with open(out, "w") as fh:
        json.dump({"devices": devices, "single": single, "mirrored": mirrored}, fh)


if __name__ == "__main__":
    main()
