"""Distributed analysis on 2 CPU processes (torch.distributed, gloo): layer sharing and FSDP2 gathering.

1. Sharing (DDP: every rank holds the whole model): the time of one analysis (``ww_callbacks.analyze`` with a
   `TorchCollective`, as the Lightning callback runs it under DDP) with ``shard_layers=True`` (each rank a
   cost-balanced share) vs ``shard_layers=False`` (rank 0 analyzes every layer, the other waits: the old
   behaviour), interleaved, medians; the same number of threads per process in both. A transformer-shaped
   encoder (d=512, 4 blocks, an 8000-token embedding), randomize=True, traps=False (the callbacks' default).
2. FSDP2 gathering: peak extra resident memory of one ``analyze`` of a ``fully_shard``ed model on each rank (in
   a fresh process: Linux's high-water mark, reset before), next to the size of its largest layer in float64
   and of the whole model; and the same analysis of the unsharded model in one process, for comparison.

Run: ``python benchmarks/bench_distributed.py`` (a few minutes on 2 cores); ``--threads`` sets the BLAS/torch
threads of each process (default 1: two processes on two cores).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any

if __name__ == "__main__":  # before numpy/torch load their thread pools (the spawned processes inherit it)
    _threads = sys.argv[sys.argv.index("--threads") + 1] if "--threads" in sys.argv else "1"
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = _threads
    # large blocks straight from mmap, returned to the OS when freed: the high-water mark of a warmed-up process
    # then shows the analysis' own peak, not pages the allocator kept from earlier runs
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch import nn  # noqa: E402

import ww_callbacks  # noqa: E402
from ww_callbacks.distributed import TorchCollective, assign_layers, layer_cost  # noqa: E402
from ww_callbacks.layers import snapshot  # noqa: E402


def encoder(d: int = 512, blocks: int = 4, vocab: int = 8000) -> nn.Module:
    layers: list[nn.Module] = [nn.Embedding(vocab, d)]
    for _ in range(blocks):
        layers += [nn.Linear(d, d) for _ in range(4)] + [nn.Linear(d, 4 * d), nn.Linear(4 * d, d)]
    return nn.Sequential(*layers)


def wide(side: int, count: int = 6) -> nn.Module:
    return nn.Sequential(*[nn.Linear(side, side) for _ in range(count)])


def _init(rank: int, port: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=2)


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


def _peak_extra_mib(fn) -> float:
    import gc

    gc.collect()
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset the high-water mark
    before = _rss_kib("VmRSS")
    fn()
    return (_rss_kib("VmHWM") - before) / 1024


def _timing(rank: int, port: str, repeats: int, out: dict) -> None:
    _init(rank, port)
    torch.manual_seed(0)
    model = encoder()
    collective = TorchCollective()
    times: dict[bool, list[float]] = {True: [], False: []}
    cpu: dict[bool, list[float]] = {True: [], False: []}
    for repeat in range(repeats):
        for shard in (True, False) if repeat % 2 else (False, True):  # interleaved, alternating order
            dist.barrier()
            start, start_cpu = time.perf_counter(), time.thread_time()
            ww_callbacks.analyze(model, seed=repeat, traps=False, collective=collective, shard_layers=shard)
            times[shard].append(time.perf_counter() - start)
            cpu[shard].append(time.thread_time() - start_cpu)
    # the busiest rank's CPU seconds: what the wall time would be on otherwise idle cores
    busiest: list[Any] = [None, None]
    dist.all_gather_object(busiest, cpu)
    if rank == 0:
        out.update(cpu_shared=[max(a, b) for a, b in zip(busiest[0][True], busiest[1][True], strict=True)])
        out.update(cpu_alone=[max(a, b) for a, b in zip(busiest[0][False], busiest[1][False], strict=True)])
        layers = snapshot(model)
        owners = assign_layers(layers, 2)
        loads = [sum(layer_cost(lw) for lw, o in zip(layers, owners, strict=True) if o == r) for r in (0, 1)]
        out.update(shared=times[True], alone=times[False], balance=max(loads) / sum(loads), n=len(layers))
    dist.destroy_process_group()


def _memory(rank: int, port: str, side: int, out: dict) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    _init(rank, port)
    torch.manual_seed(0)
    model = wide(side)
    mesh = init_device_mesh("cpu", (2,))
    for layer in model:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    _warm_up(mesh)
    peak = _peak_extra_mib(lambda: ww_callbacks.analyze(model, seed=0, traps=False))
    gathered: list[object] = [None, None]
    dist.all_gather_object(gathered, peak)
    if rank == 0:
        out["peaks"] = gathered
    dist.destroy_process_group()


def _warm_up(mesh: Any = None) -> None:
    """One small analysis first: lazy imports (scipy), DTensor dispatch and gloo buffers are not the peak."""
    from torch.distributed.fsdp import fully_shard

    small = nn.Sequential(nn.Linear(1100, 1000))
    if mesh is not None:
        fully_shard(small, mesh=mesh)
    ww_callbacks.analyze(small, seed=0, traps=False)


def _spawn(target, *args) -> dict:
    import socket

    manager = torch.multiprocessing.Manager()
    out = manager.dict()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    torch.multiprocessing.spawn(target, args=(port, *args, out), nprocs=2)
    return dict(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sides", type=int, nargs="+", default=[1536, 3072], help="layer sides, memory part")
    parser.add_argument("--no-timing", action="store_true", help="only the memory part")
    parser.add_argument("--plain-peak", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain_peak:  # one process, the unsharded model: the analysis' own workspace
        torch.manual_seed(0)
        model = wide(args.plain_peak)
        _warm_up()
        print(_peak_extra_mib(lambda: ww_callbacks.analyze(model, seed=0, traps=False)))
        return
    load = os.getloadavg()
    print(
        f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; threads per process: {args.threads}"
    )
    if not args.no_timing:
        _print_timing(_spawn(_timing, args.repeats), args.repeats)
    for side in args.sides:
        _print_memory(side, _spawn(_memory, side)["peaks"], args.threads)
    load = os.getloadavg()
    print(f"\nload average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


def _print_timing(t: dict, repeats: int) -> None:
    alone, shared = statistics.median(t["alone"]), statistics.median(t["shared"])
    cpu_alone, cpu_shared = statistics.median(t["cpu_alone"]), statistics.median(t["cpu_shared"])
    print(
        f"\n1. sharing, encoder d=512 x4 blocks + embedding 8000x512 ({t['n']} layers), {repeats} runs each"
    )
    print(f"   largest share of the cost: {t['balance']:.3f}")
    print(f"   {'':<34} {'rank 0 alone':>12} {'shared':>8} {'ratio':>6}")
    print(
        f"   {'wall time per analysis (rank 0)':<34} {alone:>11.3f}s {shared:>7.3f}s {shared / alone:>5.2f}x"
    )
    print(
        f"   {'CPU time of the busiest rank':<34} {cpu_alone:>11.3f}s {cpu_shared:>7.3f}s "
        f"{cpu_shared / cpu_alone:>5.2f}x"
    )
    print(f"   runs alone:  {' '.join(f'{x:.3f}' for x in t['alone'])}")
    print(f"   runs shared: {' '.join(f'{x:.3f}' for x in t['shared'])}")


def _print_memory(side: int, peaks: list[float], threads: int) -> None:
    import subprocess

    plain = float(
        subprocess.run(
            [sys.executable, __file__, "--plain-peak", str(side), "--threads", str(threads)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    largest = side * side * 8 / 2**20
    whole = 6 * side * side * 4 / 2**20
    print(f"\n2. FSDP2 gathering, 6 x Linear({side}, {side}) fully_shard-ed over 2 ranks")
    print(f"   largest layer in float64: {largest:.1f} MiB; whole model (float32): {whole:.1f} MiB")
    for rank, peak in enumerate(peaks):
        print(
            f"   rank {rank}: peak extra {peak:.1f} MiB = {peak / largest:.2f}x the largest layer in float64"
        )
    print(f"   one process, unsharded model: peak extra {plain:.1f} MiB = {plain / largest:.2f}x")


if __name__ == "__main__":
    main()
