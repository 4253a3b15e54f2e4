"""Quickstart: WeightWatcher metrics and data-free early stopping in Keras 3 ``fit`` (any backend).

Trains a small MLP on 1000 MNIST images. After every epoch the callback analyzes the weights (no data) and
writes ``ww/alpha``, ``ww/rand_distance`` ... into the epoch's ``logs``, so ``History`` and ``CSVLogger``
record them next to ``val_loss``; a data-free rule decides whether to stop.

Run:
    python examples/keras_quickstart.py --epochs 5 --out outputs/keras_quickstart
    KERAS_BACKEND=torch python examples/keras_quickstart.py      # or jax, tensorflow
"""

from __future__ import annotations

import argparse
from pathlib import Path

import keras

from ww_callbacks._data import load_mnist
from ww_callbacks.cli import format_report
from ww_callbacks.keras import WeightWatcherCallback
from ww_callbacks.stopping import AlphaBelow, AnyOf, Plateau


def make_model(lr: float = 0.01) -> keras.Model:
    model = keras.Sequential(
        [
            keras.Input((784,)),
            keras.layers.Dense(64, activation="relu", name="fc1"),
            keras.layers.Dense(64, activation="relu", name="fc2"),
            keras.layers.Dense(10, name="fc3"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=lr),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("outputs/keras_quickstart"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    keras.utils.set_random_seed(0)
    (x_train, y_train), (x_val, y_val) = load_mnist(n_train=1000, n_val=1000)
    ww = WeightWatcherCallback(
        # Stop when the layers look over-trained (mean alpha < 2), or when rand_distance stops growing;
        # then go back to the weights of the best analyzed epoch, like keras.callbacks.EarlyStopping.
        early_stopping=AnyOf(AlphaBelow(2.0), Plateau("rand_distance", mode="max", patience=3)),
        restore_best_weights=True,
        history_path=args.out / "ww_history.jsonl",
        seed=0,
    )
    csv_path = args.out / "log.csv"
    history = make_model().fit(
        x_train,
        y_train,
        batch_size=32,
        epochs=args.epochs,
        validation_data=(x_val, y_val),
        verbose=0,
        # The WeightWatcher callback first: the callbacks after it see its keys in `logs`.
        callbacks=[ww, keras.callbacks.CSVLogger(str(csv_path))],
    )

    print(f"Keras backend: {keras.backend.backend()}\n")
    print("epoch  ww/alpha  ww/rand_distance  val_loss  val_accuracy")
    for epoch, (alpha, rd, loss, acc) in enumerate(
        zip(
            history.history["ww/alpha"],
            history.history["ww/rand_distance"],
            history.history["val_loss"],
            history.history["val_accuracy"],
            strict=True,
        )
    ):
        print(f"{epoch:>5}  {alpha:8.3f}  {rd:16.4f}  {loss:8.4f}  {acc:12.3f}")
    if ww.stopped_epoch is not None:
        print(f"\nthe data-free rule stopped training at epoch {ww.stopped_epoch}: {ww.stop_reason}")
        print(f"weights restored from epoch {ww.best_epoch}")
    else:
        print(f"\nno data-free stop within {args.epochs} epochs")
    print("\nthe last analysis, layer by layer:")
    print(format_report(ww.last_report))
    print(f"\nper-epoch log (ww/* next to val_loss) in {csv_path}")
    print(f"per-layer history in {args.out / 'ww_history.jsonl'}")


if __name__ == "__main__":
    main()
