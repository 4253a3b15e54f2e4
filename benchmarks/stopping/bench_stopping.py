"""The stopping benchmark: does data-free early stopping work?

Trains a suite of small networks once, recording per epoch the validation metrics and the ww-callbacks history
(``generate``), then replays data-free stopping rules and the usual baselines on the recorded runs offline,
chooses each rule's options on the tuning half of the suite and reports them on the held-out half
(``evaluate``). See docs/stopping.md ("Does data-free stopping work?").

Run:
    python benchmarks/stopping/bench_stopping.py                  # evaluate the committed runs (seconds)
    python benchmarks/stopping/bench_stopping.py generate         # retrain all 34 runs (~20 CPU-minutes)
    python benchmarks/stopping/bench_stopping.py generate --only grok --jobs 2
    python benchmarks/stopping/bench_stopping.py smoke --runs /tmp/smoke  # 3 tiny runs, then evaluate them
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import stopping_eval
import stopping_suite
from stopping_suite import RunSpec


def _generate(specs: Sequence[RunSpec], runs_dir: Path, jobs: int) -> None:
    start = time.perf_counter()
    if jobs <= 1:
        for i, spec in enumerate(specs, 1):
            path = stopping_suite.generate(spec, runs_dir)
            print(f"[{i}/{len(specs)}] {path.name} ({time.perf_counter() - start:.0f} s)", flush=True)
        return
    import multiprocessing

    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(stopping_suite.generate, spec, runs_dir) for spec in specs]
        for i, future in enumerate(futures, 1):
            print(
                f"[{i}/{len(specs)}] {future.result().name} ({time.perf_counter() - start:.0f} s)", flush=True
            )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", nargs="?", default="evaluate", choices=("generate", "evaluate", "smoke"))
    parser.add_argument(
        "--runs", type=Path, default=stopping_suite.RUNS_DIR, help="run files (default: %(default)s)"
    )
    parser.add_argument(
        "--only", nargs="+", default=None, help="generate only runs whose name contains one of these"
    )
    parser.add_argument("--missing", action="store_true", help="generate only runs without a file")
    parser.add_argument("--jobs", type=int, default=1, help="training processes side by side (default 1)")
    parser.add_argument("--plot", type=Path, default=None, help="write the trajectory plot here (PNG)")
    args = parser.parse_args(argv)

    if args.command in ("generate", "smoke"):
        specs = stopping_suite.smoke_suite() if args.command == "smoke" else stopping_suite.full_suite()
        if args.only:
            specs = [s for s in specs if any(word in s.name for word in args.only)]
        if args.missing:
            specs = [s for s in specs if not (args.runs / f"{s.name}.json.gz").exists()]
        _generate(specs, args.runs, args.jobs)
        if args.command == "generate":
            return 0
    runs = stopping_suite.load_runs(args.runs)
    if not runs:
        parser.error(f"no run files in {args.runs}: run the 'generate' command first")
    print(stopping_eval.report(runs, smoke=args.command == "smoke"))
    if args.plot is not None:
        stopping_eval.plot_trajectories(runs, args.plot)
        print(f"\nplot written to {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
