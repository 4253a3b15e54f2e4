"""The stopping benchmark (``benchmarks/stopping/``): its scoring on hand-made runs, its smoke suite through the
benchmark's own command, `replay` against the callbacks' live decisions, and `recommended()` as the choice the
benchmark measures on the committed runs."""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from _cli_utils import REPO_ROOT, is_png, run_python

from ww_callbacks.stopping import AlphaBelow, AnyOf, Plateau, Slowdown, TrapsAppear, recommended, replay

BENCH = REPO_ROOT / "benchmarks" / "stopping"


def bench(name: str) -> ModuleType:
    """A module of the benchmark (``stopping_suite`` / ``stopping_eval``), importable as the command imports it."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module(name)


def make_run(val_acc, val_loss=None, alpha=None, *, family="mlp", seed=0, name="r") -> Any:
    suite = bench("stopping_suite")
    n = len(val_acc)
    val_loss = val_loss if val_loss is not None else [1.0] * n
    alpha = alpha if alpha is not None else [3.0] * n
    epochs = [
        {"epoch": e, "val_acc": a, "val_loss": v, "train_acc": 1.0, "train_loss": 0.0}
        for e, (a, v) in enumerate(zip(val_acc, val_loss, strict=True))
    ]
    history = [
        {"epoch": e, "step": e, "layer": "fc", "status": "success", "alpha": a} for e, a in enumerate(alpha)
    ]
    split = "tune" if seed == 0 else "held-out"
    return suite.Run(name, family, seed, split, "lightning", {}, n, epochs, history)


# --------------------------------------------------------------------------- scoring, by hand
def test_rule_outcome_gap_saved_and_restore():
    ev = bench("stopping_eval")
    acc = [0.50, 0.70, 0.80, 0.78, 0.76, 0.75, 0.90, 0.60]
    alpha = [5.0, 4.0, 3.0, 3.2, 3.4, 3.5, 2.0, 2.1]
    run = make_run(acc, alpha=alpha)
    # Plateau(alpha, min, patience 2): best at epoch 2, waits at 3 and 4 -> stops after epoch 4 (5 trained)
    at_stop = ev.rule_outcome(run, Plateau("alpha", mode="min", patience=2), restore=False)
    assert (at_stop.trained, at_stop.kept, at_stop.fired) == (5, 4, True)
    assert at_stop.gap == pytest.approx(0.90 - 0.76) and at_stop.saved == pytest.approx(3 / 8)
    restored = ev.rule_outcome(run, Plateau("alpha", mode="min", patience=2), restore=True)
    assert (restored.trained, restored.kept) == (5, 2) and restored.gap == pytest.approx(0.90 - 0.80)
    # Never fires: all 8 epochs trained; without restore the last epoch is kept, with restore the lowest alpha.
    never = ev.rule_outcome(run, Plateau("alpha", mode="min", patience=5), restore=False)
    assert (never.trained, never.kept, never.fired, never.saved) == (8, 7, False, 0.0)
    assert never.gap == pytest.approx(0.30)
    assert ev.rule_outcome(run, Plateau("alpha", mode="min", patience=5), restore=True).kept == 6


def test_configurations_that_share_a_repr_are_replayed_apart():
    # AlphaBelow's repr leaves out consecutive and start_from_epoch: the replay cache and the labels must not.
    ev = bench("stopping_eval")
    run = make_run([0.5] * 6, alpha=[1.5, 2.5, 1.5, 1.5, 1.5, 1.5])
    first = ev.rule_outcome(run, AlphaBelow(2.0), restore=False)
    third = ev.rule_outcome(run, AlphaBelow(2.0, consecutive=3), restore=False)
    late = ev.rule_outcome(run, AlphaBelow(2.0, start_from_epoch=2), restore=False)
    assert (first.trained, third.trained, late.trained) == (1, 5, 3)
    labels = {
        ev.short_label(r)
        for r in (AlphaBelow(2.0), AlphaBelow(2.0, consecutive=3), AlphaBelow(2.0, start_from_epoch=2))
    }
    assert labels == {
        "AlphaBelow(threshold=2, mean)",
        "AlphaBelow(threshold=2, mean, consecutive=3)",
        "AlphaBelow(threshold=2, mean, start=2)",
    }


def test_baselines_by_hand():
    ev = bench("stopping_eval")
    loss = [1.0, 0.8, 0.9, 0.85, 0.95, 0.7]
    run = make_run([0.5, 0.7, 0.6, 0.65, 0.55, 0.8], val_loss=loss)
    # val_loss EarlyStopping(patience=3): best at 1, no improvement at 2, 3, 4 -> stops after epoch 4, keeps 1
    es = ev.val_loss_early_stopping(run, 3)
    assert (es.trained, es.kept, es.fired) == (5, 1, True) and es.gap == pytest.approx(0.1)
    late = ev.val_loss_early_stopping(run, 4)
    assert (late.trained, late.kept, late.fired) == (6, 5, False) and late.gap == 0.0
    half = ev.fixed_budget(run, 0.5)
    assert (half.trained, half.kept, half.saved) == (3, 2, 0.5) and half.gap == pytest.approx(0.2)
    assert ev.fixed_budget(run, 1.0).kept == 5


def test_score_target_and_selection_key():
    ev = bench("stopping_eval")
    Outcome = ev.Outcome
    outs = [
        Outcome("a", "mlp", 10, 6, 5, True, 0.01),
        Outcome("b", "mlp", 10, 8, 7, True, 0.03),
        Outcome("c", "grok", 10, 10, 9, False, 0.0),
    ]
    s = ev.score(outs)
    assert s.mean_gap == pytest.approx(0.04 / 3) and s.worst_gap == 0.03 and s.worst_run == "b"
    assert s.saved == pytest.approx((0.4 + 0.2 + 0.0) / 3) and s.never == 1
    assert s.by_family == pytest.approx({"grok": 0.0, "mlp": 0.02})
    assert not s.meets_target  # saves 20%, not 25%
    good = ev.score([Outcome("a", "mlp", 10, 5, 4, True, 0.0), Outcome("b", "mlp", 10, 7, 6, True, 0.04)])
    assert good.meets_target
    # Saving 25% comes first; then mean gap plus the worst gap's excess over 0.05.
    assert ev.selection_key(good) < ev.selection_key(s)
    worse = ev.score([Outcome("a", "mlp", 10, 5, 4, True, 0.0), Outcome("b", "mlp", 10, 5, 4, True, 0.06)])
    assert ev.selection_key(good) < ev.selection_key(worse)  # 0.02 < 0.03 + 0.01


def test_tuning_uses_only_the_tuning_half():
    ev = bench("stopping_eval")
    # On the tuning run patience 1 is right (stop at the turn); the held-out run would want patience 3.
    tune = make_run([0.5, 0.9, 0.9, 0.5, 0.5, 0.5], alpha=[4, 3, 3.5, 3.6, 3.7, 3.8], seed=0, name="t")
    held = make_run([0.5, 0.6, 0.6, 0.6, 0.9, 0.9], alpha=[4, 3, 3.5, 2.0, 3.7, 3.8], seed=1, name="h")
    strategies = ev._rule_strategies(
        "Plateau", [lambda p=p: Plateau("alpha", mode="min", patience=p) for p in (1, 3)]
    )
    (tuned,) = ev.tune_groups([tune, held], strategies)
    assert repr(tuned.strategy.make()) == repr(Plateau("alpha", mode="min", patience=1))
    assert tuned.strategy.label == "Plateau(alpha, min, patience=1)" and not tuned.strategy.restore
    assert tuned.tune.mean_gap == pytest.approx(0.0) and tuned.held_out.mean_gap == pytest.approx(0.3)


# --------------------------------------------------------------------------- the command
@pytest.mark.slow
def test_smoke_suite_through_the_benchmark_command(tmp_path: Path):
    suite = bench("stopping_suite")
    plot = tmp_path / "trajectories.png"
    result = run_python(
        [str(BENCH / "bench_stopping.py"), "smoke", "--runs", str(tmp_path / "runs"), "--plot", str(plot)],
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    specs = suite.smoke_suite()
    runs = suite.load_runs(tmp_path / "runs")
    assert [r.name for r in runs] == sorted(s.name for s in specs)
    for spec in specs:
        (run,) = [r for r in runs if r.name == spec.name]
        assert (run.family, run.seed, run.split, run.budget) == (
            spec.family,
            spec.seed,
            spec.split,
            spec.epochs,
        )
        assert len(run.epochs) == spec.epochs and all(0.0 <= a <= 1.0 for a in run.val_acc)
        assert np.isfinite(run.val_loss).all()
        # The callback's history file, as written: every epoch analyzed, traps recorded (traps=True).
        assert [e for e, _ in run.reports] == list(range(spec.epochs))
        assert all(np.isfinite(layer.num_traps) for _, rep in run.reports for layer in rep.layers)
        assert all(np.isfinite(rep.summary["rand_distance"]) for _, rep in run.reports)
    assert "Held-out half:" in out and "[data] EarlyStopping(val_loss, patience=3)" in out
    assert "3 runs: 1 tune the rules' options, 2 are held out" in out
    assert re.search(
        r"Best data-free rule: mean [0-9.]+, worst [0-9.]+ \(.+\), saved \d+%: target (MET|MISSED)", out
    )
    assert is_png(plot)


@pytest.mark.slow
def test_replay_matches_the_lightning_callbacks_stop(tmp_path: Path):
    from _lightning_utils import make_model, make_trainer

    from ww_callbacks.lightning import WeightWatcherCallback

    def rule() -> AnyOf:
        return AnyOf(Slowdown("alpha", mode="min", window=1, ratio=0.0), TrapsAppear(min_traps=50))

    history = tmp_path / "ww_history.jsonl"
    ww = WeightWatcherCallback(
        seed=0, early_stopping=rule(), history_path=history, log_wandb=False, analyze_kwargs={"traps": True}
    )
    model = make_model(alpha_schedule=[5.0, 4.0, 3.0, 3.5, 4.0, 5.0, 6.0])
    make_trainer("lightning.pytorch", tmp_path, max_epochs=7, callbacks=[ww]).fit(model)
    assert ww.stopped_epoch == 3  # alpha turns up at epoch 3
    result = replay(rule(), history)
    assert result.stop_epoch == ww.stopped_epoch
    assert result.decision is not None and result.decision.reason in ww.stop_reason
    assert [e for e, _ in result.decisions] == [h["epoch"] for h in ww.history]


@pytest.mark.slow
@pytest.mark.keras
def test_replay_matches_the_keras_callbacks_stop_and_restore(tmp_path: Path):
    from _keras_utils import SetKernel, compile_model, single_dense
    from _lightning_utils import power_law_matrix

    from ww_callbacks.keras import WeightWatcherCallback

    kernels = [
        power_law_matrix(a, 120, 60, seed=3).astype(np.float32) for a in (5.0, 4.0, 3.0, 3.5, 4.5, 5.0)
    ]
    history = tmp_path / "ww_history.jsonl"
    ww = WeightWatcherCallback(
        seed=0,
        early_stopping=Plateau("alpha", mode="min", patience=2),
        restore_best_weights=True,
        history_path=history,
        log_wandb=False,
    )
    x = np.random.default_rng(0).standard_normal((32, 120)).astype(np.float32)
    model = compile_model(single_dense())
    model.fit(x, x[:, :60], epochs=len(kernels), verbose=0, callbacks=[SetKernel("fc", kernels), ww])
    assert (ww.stopped_epoch, ww.best_epoch) == (4, 2)
    result = replay(Plateau("alpha", mode="min", patience=2), history)
    assert (result.stop_epoch, result.restore_epoch) == (ww.stopped_epoch, ww.best_epoch)


# --------------------------------------------------------------------------- the committed runs
@pytest.mark.slow
def test_recommended_is_the_choice_measured_on_the_committed_runs():
    suite, ev = bench("stopping_suite"), bench("stopping_eval")
    runs = suite.load_runs(suite.RUNS_DIR)
    specs = suite.full_suite()
    assert sorted(r.name for r in runs) == sorted(s.name for s in specs), (
        "regenerate: bench_stopping.py generate"
    )
    assert len(runs) >= 30 and {r.split for r in runs} == {"tune", "held-out"}
    tuned, best = ev.evaluate(runs)
    assert best.strategy.make is not None and repr(best.strategy.make()) == repr(recommended())
    # The table in docs/stopping.md is the one the command prints for these runs.
    text = ev.report(runs)
    table = text.split("Held-out half:\n", 1)[1].split("\n\n", 1)[0]
    readme = (REPO_ROOT / "docs" / "stopping.md").read_text()
    assert table in readme, (
        "docs/stopping.md: the held-out table is out of date: rerun benchmarks/stopping/bench_stopping.py"
    )
