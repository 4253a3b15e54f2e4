"""The training runs of the stopping benchmark: what is trained, how, and the file each run leaves behind.

Every run trains one small network with the ww-callbacks callback attached exactly as a user would attach it
(``history_path=...``, ``analyze_kwargs={"traps": True}`` so that the correlation-trap columns exist too), and
records after every epoch the validation loss and accuracy (and the training ones). The callback's per-layer
history file and those metrics go into one compact file per run, ``runs/<name>.json.gz``, from which any
data-free rule is replayed offline with `ww_callbacks.stopping.replay`.

The split into a tuning half and a held-out half is fixed here (`RunSpec.split`): training seed 0 of every
family tunes, seed 1 is held out, so both halves hold every family.
"""

from __future__ import annotations

import gzip
import json
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from ww_callbacks._data import mnist_split, modular_addition
from ww_callbacks._training import (
    classifier_module,
    keras_mlp,
    lightning_trainer,
    loaders,
    mlp,
    quiet_frameworks,
)
from ww_callbacks.spectral.report import SpectralReport
from ww_callbacks.stopping import history_reports

FORMAT_VERSION = 1
RUNS_DIR = Path(__file__).resolve().parent / "runs"

#: Which seeds tune the rules' options and which report them (fixed before any rule was tried).
TUNE_SEEDS = (0,)
HELD_OUT_SEEDS = (1,)


@dataclass(frozen=True)
class RunSpec:
    """One training run of the suite: its family, training seed, epochs and the family's options."""

    family: str
    seed: int
    epochs: int
    params: tuple[tuple[str, Any], ...] = ()
    framework: str = "lightning"

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.params)

    @property
    def name(self) -> str:
        parts = [self.family] + [f"{k}{_short(v)}" for k, v in self.params] + [f"s{self.seed}"]
        return "_".join(parts)

    @property
    def split(self) -> str:
        if self.seed in TUNE_SEEDS:
            return "tune"
        if self.seed in HELD_OUT_SEEDS:
            return "held-out"
        raise ValueError(f"seed {self.seed} of {self.name} is in neither half")


def _short(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _spec(family: str, seed: int, epochs: int, framework: str = "lightning", **params: Any) -> RunSpec:
    return RunSpec(family, seed, epochs, tuple(params.items()), framework)


def full_suite() -> list[RunSpec]:
    """The 34 runs of the benchmark (about 20 minutes of CPU on one core)."""
    seeds = (*TUNE_SEEDS, *HELD_OUT_SEEDS)
    runs = []
    # The main job's grid (examples/seed_experiment.py): MLP 784-64-64-10, 1000 images, Adam, 20 epochs.
    for lr in (0.01, 0.1, 0.05):
        for batch in (32, 64):
            runs += [_spec("seedgrid", s, 20, lr=lr, bs=batch) for s in seeds]
    # MLPs of two widths on 4000 images with 0/20/40% of the training labels replaced at random.
    for width in (64, 256):
        for noise in (0.0, 0.2, 0.4):
            runs += [_spec("mlp", s, 30, w=width, noise=noise) for s in seeds]
    # A small CNN on 28x28 images, clean and with 40% label noise.
    for noise in (0.0, 0.4):
        runs += [_spec("cnn", s, 20, noise=noise) for s in seeds]
    # Modular addition (mod 47) with weight decay: validation accuracy jumps long after training accuracy.
    # One "epoch" is 50 full-batch steps.
    for frac, wd, lr in ((0.5, 2.0, 3e-3), (0.6, 1.0, 5e-3)):
        runs += [_spec("grok", s, 40, frac=frac, wd=wd, lr=lr) for s in seeds]
    # Keras: an MLP with 20% label noise.
    runs += [_spec("keras", s, 25, "keras", w=128, noise=0.2) for s in seeds]
    return runs


def smoke_suite() -> list[RunSpec]:
    """Three short runs through the same code (the test suite's smoke version)."""
    return [
        _spec("mlp", 0, 3, w=32, noise=0.4, n=400),
        _spec("mlp", 1, 3, w=32, noise=0.4, n=400),
        _spec("grok", 1, 3, frac=0.5, wd=2.0, lr=3e-3, p=23, steps=10),
    ]


# ------------------------------------------------------------------------------------------------ data


# ------------------------------------------------------------------------------------------------ training


def _callback_options(spec: RunSpec, history_path: Path) -> dict[str, Any]:
    # What a user writes, plus traps=True so that num_traps and the rand_* columns are in the history too.
    return {
        "seed": spec.seed,
        "history_path": str(history_path),
        "log_wandb": False,
        "analyze_kwargs": {"traps": True},
    }


def _torch_model(spec: RunSpec) -> Any:
    import torch
    from torch import nn

    opts = spec.options
    if spec.family in ("seedgrid", "mlp"):
        width = int(opts.get("w", 64))
        return mlp((784, width, width, 10))
    if spec.family == "cnn":
        return nn.Sequential(
            nn.Unflatten(1, (1, 28, 28)),
            nn.Conv2d(1, 16, 3),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(32 * 5 * 5, 64),
            nn.ReLU(),
            nn.Linear(64, 10),
        )
    if spec.family == "grok":
        p, dim = int(opts.get("p", 47)), 32

        class ModAdd(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.embed = nn.Embedding(p, dim)
                self.hidden = nn.Linear(2 * dim, 4 * dim)
                self.out = nn.Linear(4 * dim, p)

            def forward(self, pairs: torch.Tensor) -> torch.Tensor:
                x = self.embed(pairs).flatten(1)
                return self.out(torch.relu(self.hidden(x)))

        return ModAdd()
    raise ValueError(f"unknown family {spec.family!r}")


def _torch_data(spec: RunSpec) -> tuple[Any, Any, Callable[[Any], Any]]:
    """(train loader, validation loader, optimizer factory) for ``spec``."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    opts = spec.options
    if spec.family == "grok":
        p, steps = int(opts.get("p", 47)), int(opts.get("steps", 50))
        x_train, y_train, x_val, y_val = modular_addition(p, float(opts["frac"]))
        full = (torch.from_numpy(x_train), torch.from_numpy(y_train))

        class FullBatch(torch.utils.data.Dataset):  # type: ignore[type-arg]
            """One epoch = ``steps`` full-batch steps."""

            def __len__(self) -> int:
                return steps

            def __getitem__(self, index: int) -> Any:
                return full

        train = DataLoader(FullBatch(), batch_size=None, shuffle=False)
        val = DataLoader(
            TensorDataset(torch.from_numpy(x_val), torch.from_numpy(y_val)), batch_size=len(x_val)
        )
        lr, wd = float(opts["lr"]), float(opts["wd"])
        return train, val, lambda params: torch.optim.AdamW(params, lr=lr, weight_decay=wd, betas=(0.9, 0.98))
    if spec.family == "seedgrid":
        n_train, noise, batch, lr = 1000, 0.0, int(opts["bs"]), float(opts["lr"])
    else:
        n_train, noise, batch, lr = int(opts.get("n", 4000)), float(opts["noise"]), 64, 1e-3
        if spec.family == "cnn":
            n_train = int(opts.get("n", 2000))
    train, val = loaders(mnist_split(n_train, noise), batch, seed=spec.seed)
    return train, val, lambda params: torch.optim.Adam(params, lr=lr)


def train_lightning(spec: RunSpec, history_path: Path) -> list[dict[str, float]]:
    """Train ``spec`` with Lightning and the ww-callbacks callback; return the per-epoch metrics."""
    import lightning as L
    import torch

    from ww_callbacks.lightning import WeightWatcherCallback

    torch.set_num_threads(1)  # tiny models: one thread is fastest, and runs may go side by side
    L.seed_everything(spec.seed, verbose=False)
    net = _torch_model(spec)  # before the data, as the recorded runs did
    train, val, optimizer = _torch_data(spec)
    module = classifier_module(net, optimizer, track_train=True)
    epochs: list[dict[str, float]] = []

    class Recorder(L.Callback):
        """After validation and after the ww-callbacks analysis of the epoch."""

        def on_train_epoch_end(self, trainer: L.Trainer, pl_module: Any) -> None:
            loss_sum, correct, n = pl_module.train_sums
            epochs.append(
                {
                    "epoch": trainer.current_epoch,
                    **pl_module.val,
                    "train_loss": loss_sum / n,
                    "train_acc": correct / n,
                }
            )

    with tempfile.TemporaryDirectory() as root:
        callbacks = [WeightWatcherCallback(**_callback_options(spec, history_path)), Recorder()]
        lightning_trainer(spec.epochs, callbacks, root=root).fit(module, train, val)
    return epochs


def train_keras(spec: RunSpec, history_path: Path) -> list[dict[str, float]]:
    """Train ``spec`` (an MLP) with Keras and the ww-callbacks callback; return the per-epoch metrics."""
    import keras

    from ww_callbacks.keras import WeightWatcherCallback

    opts = spec.options
    (x_train, y_train), (x_val, y_val) = mnist_split(int(opts.get("n", 4000)), float(opts["noise"]))
    keras.utils.set_random_seed(spec.seed)
    width = int(opts["w"])
    model = keras_mlp((784, width, width, 10), lr=1e-3)
    epochs: list[dict[str, float]] = []

    class Recorder(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
            logs = logs or {}
            epochs.append(
                {
                    "epoch": epoch,
                    "val_loss": float(logs["val_loss"]),
                    "val_acc": float(logs["val_accuracy"]),
                    "train_loss": float(logs["loss"]),
                    "train_acc": float(logs["accuracy"]),
                }
            )

    model.fit(
        x_train,
        y_train,
        batch_size=64,
        epochs=spec.epochs,
        validation_data=(x_val, y_val),
        shuffle=True,
        verbose=0,
        callbacks=[WeightWatcherCallback(**_callback_options(spec, history_path)), Recorder()],
    )
    return epochs


def _versions(framework: str) -> dict[str, str]:
    import importlib.metadata as md

    names = ["numpy", "torch", "lightning"]
    if framework == "keras":
        import keras

        backend = keras.backend.backend()
        names = ["numpy", "keras", {"tensorflow": "tensorflow-cpu"}.get(backend, backend)]
    out = {}
    for name in names:
        for dist in (name, name.removesuffix("-cpu")):
            try:
                out[name.removesuffix("-cpu")] = md.version(dist)
                break
            except md.PackageNotFoundError:
                continue
    return out


def generate(spec: RunSpec, runs_dir: Path) -> Path:
    """Train ``spec`` and write ``runs_dir/<name>.json.gz``; return its path."""
    quiet_frameworks()
    runs_dir.mkdir(parents=True, exist_ok=True)
    start = time.process_time()
    with tempfile.TemporaryDirectory() as tmp:
        history_path = Path(tmp) / "ww_history.jsonl"
        train = train_lightning if spec.framework == "lightning" else train_keras
        epochs = train(spec, history_path)
        # The history file exactly as the callback wrote it (JSON null for NaN), one dict per line.
        history = [json.loads(line) for line in history_path.read_text().splitlines() if line.strip()]
    record = {
        "format": FORMAT_VERSION,
        "name": spec.name,
        "family": spec.family,
        "seed": spec.seed,
        "split": spec.split,
        "framework": spec.framework,
        "params": spec.options,
        "budget": spec.epochs,
        "cpu_seconds": round(time.process_time() - start, 1),
        "versions": _versions(spec.framework),
        "epochs": epochs,
        "history": history,
    }
    path = runs_dir / f"{spec.name}.json.gz"
    text = json.dumps(record, separators=(",", ":"), allow_nan=False)
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as f:
        f.write(text.encode())
    return path


# ------------------------------------------------------------------------------------------------ reading


@dataclass
class Run:
    """One recorded run: its description, the validation metrics per epoch and the callback's history rows."""

    name: str
    family: str
    seed: int
    split: str
    framework: str
    params: dict[str, Any]
    budget: int
    epochs: list[dict[str, float]]
    history: list[dict[str, Any]] = field(repr=False)
    cpu_seconds: float = 0.0
    replays: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @cached_property
    def reports(self) -> list[tuple[int, SpectralReport]]:
        """The spectral report of every analyzed epoch, rebuilt from the history rows (built once)."""
        return history_reports(self.history)

    @cached_property
    def val_acc(self) -> np.ndarray:
        return np.array([e["val_acc"] for e in self.epochs])

    @cached_property
    def val_loss(self) -> np.ndarray:
        return np.array([e["val_loss"] for e in self.epochs])

    @property
    def label(self) -> str:
        opts = ", ".join(f"{k}={_short(v)}" for k, v in self.params.items())
        return f"{self.family} ({opts}, seed {self.seed})"


def load_run(path: Path) -> Run:
    with gzip.open(path, "rt") as f:
        data = json.load(f)
    if data.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path}: format {data.get('format')!r}, expected {FORMAT_VERSION}")
    keys = ("name", "family", "seed", "split", "framework", "params", "budget", "epochs", "history")
    run = Run(**{k: data[k] for k in keys}, cpu_seconds=float(data.get("cpu_seconds", 0.0)))
    if [e["epoch"] for e in run.epochs] != list(range(len(run.epochs))):
        raise ValueError(f"{path}: epochs are not 0, 1, ..., {len(run.epochs) - 1}")
    return run


def load_runs(runs_dir: Path, names: Iterable[str] | None = None) -> list[Run]:
    """Every run file in ``runs_dir`` (or the named ones), sorted by name."""
    paths = sorted(runs_dir.glob("*.json.gz"))
    if names is not None:
        wanted = set(names)
        paths = [p for p in paths if p.name.removesuffix(".json.gz") in wanted]
    return [load_run(p) for p in paths]
