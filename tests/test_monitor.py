"""`SpectralMonitor`, the engine the Lightning and Keras callbacks share (no framework needed)."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
import warnings

import numpy as np
import pytest

from ww_callbacks.engine import DEFAULT_METRICS, SpectralMonitor
from ww_callbacks.layers import snapshot
from ww_callbacks.stopping import AlphaBelow, AnyOf, Plateau


def weights(seed: int = 0, *, nan_layer: bool = False) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {
        "fc1.weight": rng.standard_normal((120, 60)),
        "fc2.weight": rng.standard_normal((60, 40)),
        "fc3.weight": rng.standard_normal((40, 30)),
    }
    if nan_layer:
        out["fc2.weight"][3, 4] = np.nan
    return out


def test_schedule_and_options():
    monitor = SpectralMonitor(every_n_epochs=3, seed=0)
    assert [e for e in range(10) if monitor.should_run(e)] == [2, 5, 8]
    assert monitor.metrics == DEFAULT_METRICS
    assert "rand_distance" not in SpectralMonitor(randomize=False, seed=0).metrics
    with pytest.raises(ValueError, match="every_n_epochs"):
        SpectralMonitor(every_n_epochs=0)
    with pytest.raises(ValueError, match="unknown metric 'accuracy'"):
        SpectralMonitor(metrics=("alpha", "accuracy"))
    with pytest.raises(ValueError, match="randomize=True"):
        SpectralMonitor(metrics=("rand_distance",), randomize=False)
    with pytest.raises(ValueError, match="randomize=True"):
        SpectralMonitor(randomize=False, early_stopping=AnyOf(AlphaBelow(), Plateau("rand_distance")))
    with pytest.raises(ValueError, match="analyze_kwargs"):
        SpectralMonitor(analyze_kwargs={"seed": 1})
    with pytest.raises(TypeError, match="StoppingRule"):
        SpectralMonitor(early_stopping="alpha")


def test_run_logs_summary_and_per_layer_metrics():
    monitor = SpectralMonitor(seed=0, per_layer=True, prefix="spec/")
    result = monitor.run(weights(), epoch=4, step=50)
    report = result.report
    assert report is not None and report.num_summarized == 3
    for metric in DEFAULT_METRICS:
        assert result.metrics[f"spec/{metric}"] == pytest.approx(report.summary[metric])
        for layer in ("fc1", "fc2", "fc3"):
            key = f"spec/{layer}/{metric}"
            if metric == "num_nonfinite_layers":  # a count over layers: no per-layer value
                assert key not in result.metrics
            else:
                assert result.metrics[key] == pytest.approx(getattr(report[layer], metric))
    assert result.metrics["spec/num_nonfinite_layers"] == 0
    assert all(math.isfinite(v) for v in result.metrics.values())
    entry = monitor.history[-1]
    assert (entry["epoch"], entry["step"], entry["num_summarized"], entry["num_layers"]) == (4, 50, 3, 3)
    assert entry["alpha"] == pytest.approx(report.summary["alpha"])
    assert monitor.last_report is report and monitor.analysis_time > 0
    assert result.decision is None and not result.stop


def test_layer_filter_and_snapshot_input():
    monitor = SpectralMonitor(seed=0, layers=["-fc3"], per_layer=True, metrics=("alpha",))
    report = monitor.run(weights(), epoch=0).report
    assert [lr.name for lr in report.layers] == ["fc1", "fc2"]
    # a ready snapshot is analyzed as given
    result = SpectralMonitor(seed=0, metrics=("alpha",)).run(snapshot(weights(), layers="fc3"), epoch=0)
    assert [lr.name for lr in result.report.layers] == ["fc3"]


def test_per_epoch_rng_is_deterministic_and_global_rng_untouched():
    np_state, py_state = np.random.get_state(), random.getstate()  # noqa: NPY002 - checking it
    a, b = SpectralMonitor(seed=11), SpectralMonitor(seed=11)
    ra = a.analyze(weights(), epoch=3)
    rb = b.analyze(weights(), epoch=3)
    assert [lr.rand_distance for lr in ra] == [lr.rand_distance for lr in rb]
    other_epoch = a.analyze(weights(), epoch=4)
    assert [lr.rand_distance for lr in other_epoch] != [lr.rand_distance for lr in ra]
    drawn = {SpectralMonitor().seed for _ in range(4)}
    assert len(drawn) == 4  # seed=None draws fresh entropy each time
    assert random.getstate() == py_state
    after = np.random.get_state()  # noqa: NPY002
    assert after[0] == np_state[0] and np.array_equal(after[1], np_state[1]) and after[2:] == np_state[2:]


def test_nan_layer_is_reported_not_fatal():
    monitor = SpectralMonitor(seed=0, per_layer=True)
    with pytest.warns(RuntimeWarning, match=r"epoch 0: the weights of 1 of 3 layers hold NaN or Inf \(fc2\)"):
        result = monitor.run(weights(nan_layer=True), epoch=0)
    assert result.report["fc2"].status == "non-finite"
    assert result.report.num_summarized == 2
    assert "ww/alpha" in result.metrics and not any(k.startswith("ww/fc2/") for k in result.metrics)
    assert result.metrics["ww/num_nonfinite_layers"] == 1 == monitor.history[-1]["num_nonfinite_layers"]


def test_non_finite_layers_are_named_once_per_new_set():
    monitor = SpectralMonitor(seed=0)
    both = weights(nan_layer=True)
    both["fc3.weight"][0, 0] = np.inf
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for epoch, w in enumerate([weights(), weights(nan_layer=True), weights(nan_layer=True), both, both]):
            monitor.run(w, epoch=epoch)
    named = [str(w.message) for w in caught if "hold NaN or Inf" in str(w.message)]
    assert len(named) == 2
    assert "epoch 1" in named[0] and "(fc2)" in named[0]
    assert "epoch 3" in named[1] and "2 of 3 layers" in named[1] and "(fc2, fc3)" in named[1]
    assert "ww/num_nonfinite_layers" in named[0]
    assert [h["num_nonfinite_layers"] for h in monitor.history] == [0, 1, 1, 2, 2]


def test_analysis_errors_become_warnings():
    monitor = SpectralMonitor(seed=0, early_stopping=AlphaBelow())
    with pytest.warns(RuntimeWarning, match="could not snapshot"):
        result = monitor.run(object(), epoch=0)
    assert result.metrics == {} and result.report is None and monitor.history == []
    with pytest.warns(RuntimeWarning, match="no analyzable layer"):
        empty = monitor.run({"bias": np.ones(3)}, epoch=1)
    # nothing to average; the count of diverged layers is still a (zero) count
    assert empty.metrics == {"ww/num_nonfinite_layers": 0.0}
    assert empty.report is not None and empty.report.num_summarized == 0


def test_non_finite_summary_is_not_logged():
    monitor = SpectralMonitor(seed=0)
    with pytest.warns(RuntimeWarning, match="summary alpha, .* not finite"):
        result = monitor.run({"fc.weight": np.ones((30, 20))}, epoch=0)  # rank one: the fit fails
    assert "ww/alpha" not in result.metrics
    assert math.isnan(monitor.history[0]["alpha"])


def test_broken_user_rule_does_not_stop_training():
    class Broken(AlphaBelow):
        def check(self, report, *, epoch):
            raise ZeroDivisionError("oops")

    monitor = SpectralMonitor(seed=0, early_stopping=Broken())
    with pytest.warns(RuntimeWarning, match="stopping rule .* failed"):
        result = monitor.run(weights(), epoch=0)
    assert result.decision is None and result.metrics


def test_rule_decision_and_record_stop():
    monitor = SpectralMonitor(seed=0, early_stopping=AlphaBelow(threshold=100.0))
    result = monitor.run(weights(), epoch=2, step=7)
    assert result.stop and "below 100" in result.decision.reason
    assert monitor.stopped_epoch is None  # the caller decides (min_epochs, ranks) and records
    monitor.record_stop(2, result.decision.reason)
    assert (monitor.stopped_epoch, monitor.stop_reason) == (2, result.decision.reason)
    monitor.reset()
    assert monitor.history == [] and monitor.stopped_epoch is None and monitor.early_stopping.num_checks == 0


def test_state_dict_resumes_history_rule_and_shuffles():
    def build(seed=None):
        return SpectralMonitor(seed=seed, early_stopping=Plateau("alpha", mode="max", patience=10))

    models = [weights(seed) for seed in range(4)]
    whole = build(seed=5)
    full = [whole.run(m, epoch=e, step=10 * e) for e, m in enumerate(models)]

    first = build(seed=5)
    for e, m in enumerate(models[:2]):
        first.run(m, epoch=e, step=10 * e)
    state = json.loads(json.dumps(first.state_dict()))  # plain values only
    resumed = build()  # a fresh seed, replaced by the checkpoint's
    resumed.load_state_dict(state)
    assert resumed.seed == 5 and resumed.last_report is not None
    tail = [resumed.run(m, epoch=e, step=10 * e) for e, m in enumerate(models) if e >= 2]

    def strip(history):  # analysis wall time differs from run to run
        return [{k: v for k, v in entry.items() if k != "elapsed"} for entry in history]

    assert strip(resumed.history) == strip(whole.history)
    assert [r.metrics for r in tail] == [r.metrics for r in full[2:]]
    assert resumed.early_stopping.state_dict() == whole.early_stopping.state_dict()


def test_history_sink_writes_every_processed_report(tmp_path):
    from ww_callbacks.sinks.history import load_history

    monitor = SpectralMonitor(seed=0)
    monitor.open_sinks(history_path=tmp_path / "h.jsonl")
    for epoch in range(2):
        monitor.run(weights(epoch), epoch=epoch, step=epoch * 3)
    monitor.close_sinks()
    rows = load_history(tmp_path / "h.jsonl", as_pandas=False)
    assert [(r["epoch"], r["step"], r["layer"]) for r in rows] == [
        (e, e * 3, name) for e in range(2) for name in ("fc1", "fc2", "fc3")
    ]


def test_wandb_is_never_imported_or_created_unasked():
    code = (
        "import sys, numpy as np\n"
        "from ww_callbacks.engine import SpectralMonitor\n"
        "m = SpectralMonitor(seed=0)\n"
        "assert m.resolve_wandb_run() is None\n"
        "m.run({'fc.weight': np.random.default_rng(0).normal(size=(50, 20))}, epoch=0)\n"
        "bad = [n for n in ('wandb', 'torch', 'keras', 'lightning', 'pytorch_lightning', 'tensorflow') if n in sys.modules]\n"
        "assert not bad, bad\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_sink_failures_are_contained(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monitor = SpectralMonitor(seed=0)
    monitor.open_sinks(history_path=blocker / "sub" / "h.jsonl")  # parent is a file: writing fails
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = monitor.run(weights(), epoch=0)
        monitor.close_sinks()
    assert result.metrics and any("history file" in str(w.message) for w in caught)
