"""Benchmarks of ``ww-callbacks sweep`` and of analyzing a sharded model directory.

1. Sweep: 20 checkpoints (Lightning-style ``.ckpt`` dicts with ``epoch``/``global_step``) of a small random-init
   GPT-2 (4 layers, 256 wide, 2000-token vocabulary), analyzed by ``ww-callbacks sweep`` (a fresh interpreter
   each time, as a user runs it) with ``--jobs 1``, ``--jobs 2`` (pool start-up included) and on a 2-worker
   Dask ``LocalCluster`` (already running; its start-up is printed separately). Runs are interleaved; medians.
2. Memory: a random-init GPT-2 of about 1.2 GB in float32 (24 layers, 1024 wide, 50257-token vocabulary) saved
   with ``save_pretrained(max_shard_size="200MB")``; peak extra resident memory of ``analyze(directory)`` in a
   fresh process (after a warm-up analysis), next to the largest layer in float64, and of loading the whole model
   (``load_weights(directory)``) for contrast. The model is written to a temporary directory and deleted after.

Run: ``python benchmarks/bench_sweep.py [--part sweep|memory|all] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import ww_callbacks
from ww_callbacks.sinks.history import load_history

ROOT = Path(__file__).resolve().parents[1]


def _quiet_transformers() -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _gpt2(n_layer: int, n_embd: int, vocab: int, seed: int) -> object:
    import torch
    import transformers

    _quiet_transformers()
    config = transformers.GPT2Config(
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=max(1, n_embd // 64),
        vocab_size=vocab,
        n_positions=256,
        bos_token_id=0,
        eos_token_id=0,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return transformers.GPT2LMHeadModel(config).eval()


# ------------------------------------------------------------------------------------------------ sweep


def _write_checkpoints(directory: Path, count: int = 20) -> None:
    """``count`` checkpoints of one small GPT-2 whose weights drift a little from one to the next."""
    import torch

    model = _gpt2(n_layer=4, n_embd=256, vocab=2000, seed=0)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    generator = torch.Generator().manual_seed(1)
    for epoch in range(count):
        for value in state.values():
            if value.dtype.is_floating_point:
                value.add_(0.02 * torch.randn(value.shape, generator=generator) * value.std().clamp_min(1e-3))
        step = 50 * (epoch + 1)
        checkpoint = {"epoch": epoch, "global_step": step, "state_dict": state}
        torch.save(checkpoint, directory / f"epoch={epoch}-step={step}.ckpt")


def bench_sweep(repeats: int) -> None:
    from distributed import LocalCluster

    with tempfile.TemporaryDirectory(prefix="ww_bench_sweep_") as tmp:
        ckpts = Path(tmp) / "ckpts"
        ckpts.mkdir()
        _write_checkpoints(ckpts)
        start = time.perf_counter()
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
        cluster_start = time.perf_counter() - start
        modes = {
            "1 process (--jobs 1)": ["--jobs", "1"],
            "2 processes (--jobs 2)": ["--jobs", "2"],
            "Dask LocalCluster, 2 workers": ["--scheduler", cluster.scheduler_address],
        }
        times: dict[str, list[float]] = {name: [] for name in modes}
        histories: dict[str, Path] = {}
        try:
            for repeat in range(repeats):
                for index, (name, flags) in enumerate(modes.items()):
                    history = Path(tmp) / f"h_{repeat}_{index}.jsonl"
                    # the command a user runs, in a fresh interpreter (start-up included in every mode)
                    command = [sys.executable, "-m", "ww_callbacks", "sweep", str(ckpts), "-o", str(history)]
                    start = time.perf_counter()
                    subprocess.run([*command, *flags], check=True, capture_output=True, env=_env())
                    times[name].append(time.perf_counter() - start)
                    histories[name] = history
        finally:
            cluster.close()
        rows = {name: load_history(path, as_pandas=False) for name, path in histories.items()}
        reference = rows["1 process (--jobs 1)"]
        assert len(reference) % 20 == 0 and all(len(r) == len(reference) for r in rows.values())
        print(
            f"20 checkpoints of GPT-2 (4 x 256, vocab 2000; {len(reference) // 20} layers each), randomize=True, "
            f"traps=False; {os.cpu_count()} CPUs, medians of {repeats} interleaved runs of `ww-callbacks sweep`; "
            f"Dask cluster start-up {cluster_start:.1f} s (not included)"
        )
        print(f"{'mode':32} {'wall s':>8} {'vs 1 process':>13} {'per checkpoint s':>17} {'max rel diff':>13}")
        base = statistics.median(times["1 process (--jobs 1)"])
        for name, values in times.items():
            median = statistics.median(values)
            diff = _max_rel_diff(reference, rows[name])
            print(f"{name:32} {median:8.2f} {base / median:12.2f}x {median / 20:17.3f} {diff:13.1e}")


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def _max_rel_diff(a: list[dict[str, object]], b: list[dict[str, object]]) -> float:
    """Largest relative difference of the numeric columns (BLAS thread counts differ between modes, so the
    last bits of the eigenvalues may too)."""
    worst = 0.0
    for ra, rb in zip(a, b, strict=True):
        assert (ra["epoch"], ra["layer"]) == (rb["epoch"], rb["layer"])
        for key, va in ra.items():
            vb = rb[key]
            if isinstance(va, float) and isinstance(vb, float) and np.isfinite(va) and np.isfinite(vb):
                worst = max(worst, abs(va - vb) / max(abs(va), abs(vb), 1e-300))
    return worst


# ----------------------------------------------------------------------------------------------- memory


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


def _peak_extra_mib(fn: object) -> float:
    import gc

    gc.collect()
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset the high-water mark
    before = _rss_kib("VmRSS")
    fn()  # type: ignore[operator]
    return (_rss_kib("VmHWM") - before) / 1024


def _print_peak_of(what: str, directory: str) -> None:
    """In a fresh process: warm up on a tiny directory, then print the peak extra MiB of ``what``."""
    from safetensors.numpy import save_file

    with tempfile.TemporaryDirectory() as small:
        w = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)
        save_file({"a.weight": w}, os.path.join(small, "model.safetensors"))
        ww_callbacks.analyze(small, seed=0)
        ww_callbacks.io.load_weights(small)
    if what == "analyze":
        print(_peak_extra_mib(lambda: ww_callbacks.analyze(directory, seed=0)))
    else:
        print(_peak_extra_mib(lambda: ww_callbacks.io.load_weights(directory)))


def _peak_in_fresh_process(what: str, directory: Path) -> float:
    out = subprocess.run(
        [sys.executable, __file__, "--peak-of", what, str(directory)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])},
    ).stdout
    return float(out.strip().splitlines()[-1])


def bench_memory() -> None:
    from ww_callbacks.io import ModelDirectory

    tmp = Path(tempfile.mkdtemp(prefix="ww_bench_memory_"))
    try:
        model = _gpt2(n_layer=24, n_embd=1024, vocab=50257, seed=0)
        params = sum(p.numel() for p in model.parameters())
        model.save_pretrained(tmp, max_shard_size="200MB")
        del model
        directory = ModelDirectory(tmp)
        shapes = directory.shapes  # read from the headers: nothing loaded
        largest = max((s for s in shapes.values() if len(s) == 2), key=lambda s: s[0] * s[1])
        largest_f64 = largest[0] * largest[1] * 8 / 2**20
        size = sum(f.stat().st_size for f in directory.files) / 2**30
        start = time.perf_counter()
        peak = _peak_in_fresh_process("analyze", tmp)
        elapsed = time.perf_counter() - start
        whole = _peak_in_fresh_process("load", tmp)
        print(
            f"GPT-2 24 x 1024, vocab 50257: {params / 1e6:.0f}M parameters, {size:.2f} GiB float32 in "
            f"{len(directory.files)} safetensors shards; largest layer {largest[0]}x{largest[1]}"
        )
        print(f"{'what':44} {'peak extra MiB':>15} {'x largest (f64)':>16}")
        print(f"{'largest layer in float64':44} {largest_f64:15.1f} {1.0:15.2f}x")
        print(f"{'analyze(directory), one layer at a time':44} {peak:15.1f} {peak / largest_f64:15.2f}x")
        print(f"{'load_weights(directory): the whole model':44} {whole:15.1f} {whole / largest_f64:15.2f}x")
        print(f"analyze(directory) took {elapsed:.1f} s (fresh process, warm-up included)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("sweep", "memory", "all"), default="all")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--peak-of", nargs=2, metavar=("WHAT", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peak_of:
        _print_peak_of(*args.peak_of)
        return
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    if args.part in ("sweep", "all"):
        bench_sweep(args.repeats)
    if args.part in ("memory", "all"):
        bench_memory()
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
