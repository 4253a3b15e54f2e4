"""Spectral core speed and memory: weightwatcher 0.7.7 vs ww-callbacks vs the eigenvalue floor, side by side.

For each model (random init, no download): the MNIST MLP 784-64-64-10, a ResNet-18-shaped CNN, a BERT-base-shaped
encoder and an MLP with a 4096x4096 layer, it times

* weightwatcher ``analyze(randomize=True)`` (``--ww-repeats`` runs; it is slow),
* ours: ``ww_callbacks.analyze(model, seed=0)`` (randomize=True, every weightwatcher column), with ``mp_fit=True``,
  and as the callbacks run it (``traps=False``: no correlation-trap fit of the shuffled ESD),
* the floor: the eigenvalue routine ours uses (`slice_eigenvalues`), applied to the same matrices and to one
  shuffled copy of each, nothing else,

and prints medians, the ratios, and the peak extra resident memory of one analysis (in a fresh process) next to
the size of the largest layer in float64.

Run: ``python benchmarks/bench_core.py`` (about 10 minutes on 2 cores, most of it weightwatcher);
``--models mlp`` and ``--ww-repeats 0`` make it quick.

``--solvers`` prints a second table instead: the callbacks' analysis (``traps=False``) with each eigensolver:
numpy on the host, torch on the CPU in float64 and float32, and, on a machine with a GPU, torch on the GPU (the
weights moved there first), with the largest relative difference of any column from the numpy path (float64) and
of alpha (float32). ``--models llama-block`` is one block of a 7B Llama (4096x4096 x4, 4096x11008 x3), the size the
GPU path is for.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import statistics
import sys
import time
from collections.abc import Callable

if "--solvers" not in sys.argv:  # weightwatcher picks its SVD at import: keep it on the CPU
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import ww_callbacks  # noqa: E402
from ww_callbacks.spectral import esd  # noqa: E402


def mnist_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else None
        )


def resnet18() -> nn.Module:
    """The layer shapes of torchvision's ResNet-18 (forward pass not needed here)."""
    layers: list[nn.Module] = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64)]
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [_Block(cin, cout, stride), _Block(cout, cout, 1)]
        cin = cout
    layers.append(nn.Linear(512, 1000))
    return nn.Sequential(*layers)


def bert_base() -> nn.Module:
    from transformers import BertConfig, BertModel

    return BertModel(BertConfig())  # bert-base-uncased shapes, random init


def mlp_4096() -> nn.Module:
    return nn.Sequential(
        nn.Linear(784, 4096), nn.ReLU(), nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, 10)
    )


class _LlamaBlock(nn.Module):
    """The weight shapes of one block of a 7B Llama: q, k, v, o (4096x4096), gate, up (11008x4096), down."""

    def __init__(self) -> None:
        super().__init__()
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            setattr(self, name, nn.Linear(4096, 4096, bias=False))
        self.gate_proj, self.up_proj = nn.Linear(4096, 11008, bias=False), nn.Linear(4096, 11008, bias=False)
        self.down_proj = nn.Linear(11008, 4096, bias=False)


MODELS: dict[str, Callable[[], nn.Module]] = {
    "mlp": mnist_mlp,
    "resnet18": resnet18,
    "bert-base": bert_base,
    "mlp-4096": mlp_4096,
    "llama-block": _LlamaBlock,
}


def _median_time(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


def _peak_extra_mib(fn: Callable[[], object]) -> float:
    """Peak resident memory above the current level while ``fn`` runs (Linux: resets the high-water mark)."""
    import gc

    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return float("nan")
    before = _rss_kib("VmRSS")
    fn()
    return (_rss_kib("VmHWM") - before) / 1024


def _peak_in_fresh_process(name: str) -> float:
    """Peak extra memory of one ``analyze(mp_fit=True)`` in a new interpreter: in this one, the allocator keeps
    pages from earlier runs resident and reuses them, which would hide the peak."""
    import subprocess

    out = subprocess.run(
        [sys.executable, __file__, "--peak-of", name], capture_output=True, text=True, check=True
    ).stdout
    return float(out.strip().splitlines()[-1])


def _print_peak_of(name: str) -> None:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = MODELS[name]().eval()
    # a tiny analysis first, so that one-time costs (lazy imports, BLAS/LAPACK start-up) are not counted
    small = np.random.default_rng(0).standard_normal((64, 32))
    ww_callbacks.analyze({"w.weight": small, "c.weight": small.reshape(8, 4, 8, 8)}, seed=0, mp_fit=True)
    print(_peak_extra_mib(lambda: ww_callbacks.analyze(model, seed=0, mp_fit=True)))


def _floor(layers: list[ww_callbacks.LayerWeights]) -> Callable[[], None]:
    rng = np.random.default_rng(0)
    shuffled = [esd.shuffled_copies(lw.matrices, rng, 1) for lw in layers]

    def run() -> None:
        for lw, rand in zip(layers, shuffled, strict=True):
            esd.slice_eigenvalues(lw.matrices, lw.scale)
            esd.slice_eigenvalues(rand, lw.scale)

    return run


def _ww(model: nn.Module) -> Callable[[], None]:
    import weightwatcher as ww

    logging.getLogger("weightwatcher").setLevel(logging.ERROR)

    def run() -> None:
        with contextlib.redirect_stdout(io.StringIO()):
            ww.WeightWatcher(model=model).analyze(randomize=True)

    return run


def bench(name: str, repeats: int, ww_repeats: int) -> dict[str, float]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = MODELS[name]().eval()
    report = ww_callbacks.analyze(model, seed=0)  # warm-up, and the set of analyzed layers
    analyzed = {lr.longname for lr in report.layers if lr.has_esd}
    layers = [lw for lw in ww_callbacks.snapshot(model) if lw.longname in analyzed]
    largest = max(int(np.prod(lw.matrices.shape)) for lw in layers) * 8 / 2**20
    row = {
        "layers": len(layers),
        "ours": _median_time(lambda: ww_callbacks.analyze(model, seed=0), repeats),
        "ours_mp": _median_time(lambda: ww_callbacks.analyze(model, seed=0, mp_fit=True), repeats),
        "ours_cb": _median_time(lambda: ww_callbacks.analyze(model, seed=0, traps=False), repeats),
        "floor": _median_time(_floor(layers), repeats),
        "peak_mib": _peak_in_fresh_process(name),
        "largest_mib": largest,
        "ww": _median_time(_ww(model), ww_repeats) if ww_repeats else float("nan"),
    }
    return row


def _worst_relative(
    a: ww_callbacks.SpectralReport, b: ww_callbacks.SpectralReport, column: str | None
) -> float:
    """The largest relative difference between two reports' finite per-layer values (of ``column``, or all)."""
    worst = 0.0
    for x, y in zip(a.layers, b.layers, strict=True):
        row_a, row_b = x.to_row(), y.to_row()
        for key in [column] if column else list(row_a):
            u, v = row_a[key], row_b[key]
            if isinstance(u, float) and isinstance(v, float) and np.isfinite(u) and np.isfinite(v) and u:
                worst = max(worst, abs(u - v) / abs(u))
    return worst


def bench_solvers(name: str, repeats: int) -> list[tuple[str, float, float, float]]:
    """(solver, seconds per analysis, its speed-up over numpy, worst relative difference) for one model."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = MODELS[name]().eval()
    options = {"seed": 0, "traps": False}
    runs = [("numpy", model, {"eigensolver": "numpy"}), ("torch cpu f64", model, {"eigensolver": "torch"})]
    runs.append(("torch cpu f32", model, {"eigensolver": "torch", "eigen_dtype": "float32"}))
    if torch.cuda.is_available():
        gpu = MODELS[name]().eval()
        gpu.load_state_dict(model.state_dict())
        gpu = gpu.cuda()
        runs.append(("torch gpu f64", gpu, {"eigensolver": "torch"}))
        runs.append(("torch gpu f32", gpu, {"eigensolver": "torch", "eigen_dtype": "float32"}))
        torch.cuda.synchronize()
    reference = ww_callbacks.analyze(model, **options, eigensolver="numpy")
    rows = []
    for label, net, extra in runs:
        report = ww_callbacks.analyze(net, **options, **extra)  # warm-up (and the numbers)
        seconds = _median_time(
            lambda net=net, extra=extra: ww_callbacks.analyze(net, **options, **extra), repeats
        )
        column = "alpha" if extra.get("eigen_dtype") == "float32" else None
        rows.append((label, seconds, _worst_relative(reference, report, column)))
    base = rows[0][1]
    return [(label, seconds, base / seconds, diff) for label, seconds, diff in rows]


def _print_solvers(models: list[str], repeats: int) -> None:
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    print(
        f"torch {torch.__version__}, numpy {np.__version__}, {os.cpu_count()} CPUs, {device}; the callbacks' "
        f"analysis (randomize, traps=False), medians of {repeats} runs; difference: largest relative difference "
        "from numpy of any column (f64) or of alpha (f32)"
    )
    header = f"{'model':<12} {'solver':<14} {'seconds':>9} {'vs numpy':>9} {'difference':>11}"
    print(header)
    print("-" * len(header))
    for name in models:
        for label, seconds, speedup, diff in bench_solvers(name, repeats):
            print(f"{name:<12} {label:<14} {seconds:>9.3f} {speedup:>8.2f}x {diff:>11.1e}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS)[:4], choices=list(MODELS))
    parser.add_argument("--repeats", type=int, default=5, help="runs of ours and of the floor (median)")
    parser.add_argument(
        "--ww-repeats", type=int, default=1, help="runs of weightwatcher (median); 0 skips it"
    )
    parser.add_argument(
        "--peak-of", choices=list(MODELS), help=argparse.SUPPRESS
    )  # internal: one measurement
    parser.add_argument("--solvers", action="store_true", help="compare the eigensolvers instead (see above)")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)
    if args.peak_of:
        _print_peak_of(args.peak_of)
        return
    if args.solvers:
        _print_solvers(args.models, args.repeats)
        return

    header = (
        f"{'model':<10} {'layers':>6} {'weightwatcher':>13} {'ours':>8} {'ww/ours':>8} {'floor':>8} "
        f"{'ours/floor':>10} {'ours+mp':>8} {'mp cost':>8} {'callback':>8} {'ww/cb':>7} {'peak MiB':>9} "
        f"{'largest':>8} {'peak/lg':>7}"
    )
    print(
        f"torch {torch.__version__}, numpy {np.__version__}, {os.cpu_count()} CPUs; medians of "
        f"{args.repeats} runs (weightwatcher: {args.ww_repeats}); times in seconds"
    )
    print(header)
    print("-" * len(header))
    for name in args.models:
        r = bench(name, args.repeats, args.ww_repeats)
        print(
            f"{name:<10} {r['layers']:>6} {r['ww']:>13.3f} {r['ours']:>8.3f} {r['ww'] / r['ours']:>7.1f}x "
            f"{r['floor']:>8.3f} {r['ours'] / r['floor']:>9.2f}x {r['ours_mp']:>8.3f} "
            f"{100 * (r['ours_mp'] / r['ours'] - 1):>7.0f}% {r['ours_cb']:>8.3f} {r['ww'] / r['ours_cb']:>6.0f}x "
            f"{r['peak_mib']:>9.1f} {r['largest_mib']:>8.1f} "
            f"{r['peak_mib'] / r['largest_mib']:>6.2f}x",
            flush=True,
        )


if __name__ == "__main__":
    main()
