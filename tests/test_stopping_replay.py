"""The rules measured by the stopping benchmark (`Slowdown`, `LayersPlateau`, `TrapsAppear`), offline `replay` of
recorded histories, and `recommended()`: each checked against hand-computed sequences."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import ww_callbacks
from ww_callbacks.sinks.history import HistoryWriter, load_history, summarize_history
from ww_callbacks.spectral.report import LayerResult, SpectralReport
from ww_callbacks.stopping import (
    AllOf,
    AlphaBelow,
    AnyOf,
    LayersPlateau,
    Plateau,
    Replay,
    Slowdown,
    StoppingRule,
    TrapsAppear,
    history_reports,
    recommended,
    replay,
)


def rows_of(**per_layer: list[float]) -> list[dict]:
    """History rows: ``per_layer={metric_layer: [values per epoch]}`` as ``alpha_a=[...]``, ``alpha_b=[...]``."""
    rows = []
    epochs = len(next(iter(per_layer.values())))
    layers = sorted({key.rsplit("_", 1)[1] for key in per_layer})
    for epoch in range(epochs):
        for layer in layers:
            row = {"epoch": epoch, "step": 10 * epoch, "layer": layer, "status": "success"}
            for key, values in per_layer.items():
                metric, name = key.rsplit("_", 1)
                if name == layer:
                    row[metric] = values[epoch]
            rows.append(row)
    return rows


def one_layer(metric: str, values: list[float]) -> list[dict]:
    return [{"epoch": e, "step": e, "layer": "fc", metric: v} for e, v in enumerate(values)]


def stops(rule: StoppingRule, rows) -> list[bool]:
    """The decision at every epoch (not stopping at the first stop)."""
    return [rule.update(report, epoch=epoch).stop for epoch, report in history_reports(rows)]


# --------------------------------------------------------------------------- Slowdown
def test_slowdown_stops_when_the_rise_falls_to_a_share_of_its_fastest():
    values = [1.0, 3.0, 5.0, 6.0, 6.5, 6.75]  # rises per analysis: 2, 2, 1, 0.5, 0.25
    assert (
        replay(Slowdown("rand_distance", window=1, ratio=0.25), one_layer("rand_distance", values)).stop_epoch
        == 4
    )
    assert (
        replay(
            Slowdown("rand_distance", window=1, ratio=0.125), one_layer("rand_distance", values)
        ).stop_epoch
        == 5
    )
    # window 2: (5-1)/2 = 2, (6-3)/2 = 1.5, (6.5-5)/2 = 0.75, (6.75-6)/2 = 0.375 <= 0.25 * 2 = 0.5 at epoch 5
    result = replay(Slowdown("rand_distance", window=2, ratio=0.25), one_layer("rand_distance", values))
    assert result.stop_epoch == 5
    assert "+0.375 per analysis" in result.decision.reason and "fastest 2" in result.decision.reason
    # patience: two slow checks in a row (0.5 and 0.25 are both <= 0.5)
    assert (
        replay(
            Slowdown("rand_distance", window=1, ratio=0.25, patience=2), one_layer("rand_distance", values)
        ).stop_epoch
        == 5
    )


def test_slowdown_ratio_zero_is_a_smoothed_extremum_and_mode_min_mirrors():
    alpha = [5.0, 4.0, 3.0, 3.5, 2.5, 2.75, 3.0]
    # window 1: falls 1, 1, then rises 0.5 at epoch 3 -> stop there
    assert (
        replay(Slowdown("alpha", mode="min", window=1, ratio=0.0), one_layer("alpha", alpha)).stop_epoch == 3
    )
    # window 2: falls (5-3)/2 = 1, (4-3.5)/2 = 0.25, (3-2.5)/2 = 0.25, (3.5-2.75)/2 = 0.375, (2.5-3)/2 = -0.25
    assert (
        replay(Slowdown("alpha", mode="min", window=2, ratio=0.0), one_layer("alpha", alpha)).stop_epoch == 6
    )
    mirrored = [-a for a in alpha]
    assert (
        replay(Slowdown("alpha", mode="max", window=1, ratio=0.0), one_layer("alpha", mirrored)).stop_epoch
        == 3
    )


def test_slowdown_needs_progress_skips_nan_and_early_epochs():
    flat = one_layer("alpha", [3.0] * 6)
    assert (
        replay(Slowdown("alpha", mode="min", window=1, ratio=0.0), flat).stop_epoch is None
    )  # never improved
    with_nan = one_layer("rand_distance", [1.0, math.nan, 3.0, math.nan, 3.0])
    # NaN epochs are skipped: values 1, 3, 3 -> rises 2, 0 -> stop at epoch 4
    result = replay(Slowdown("rand_distance", window=1, ratio=0.0), with_nan)
    assert result.stop_epoch == 4
    assert "not counted" in result.decisions[1][1].reason
    late = Slowdown("rand_distance", window=1, ratio=0.0, start_from_epoch=3)
    # from epoch 3 on: 6, 6 (no rise yet, so nothing to slow down from), 7, 7 -> stop at 6
    assert replay(late, one_layer("rand_distance", [1, 2, 3, 6, 6, 7, 7])).stop_epoch == 6


def test_slowdown_best_epoch_and_validation():
    rule = Slowdown("rand_distance", mode="max")
    assert rule.best_epoch([{"epoch": 0, "rand_distance": 0.1}, {"epoch": 1, "rand_distance": 0.3}]) == 1
    for bad in ({"ratio": 1.0}, {"ratio": -0.1}, {"window": 0}, {"patience": 0}, {"mode": "up"}):
        with pytest.raises(ValueError):
            Slowdown("alpha", **bad)
    with pytest.raises(ValueError, match="unknown metric"):
        Slowdown("accuracy")


# --------------------------------------------------------------------------- LayersPlateau
def test_layers_plateau_counts_each_layer_against_its_own_best():
    rows = rows_of(
        alpha_a=[4.0, 3.0, 3.5, 3.6, 3.7],  # best at epoch 1, then waits 1, 2, 3
        alpha_b=[5.0, 4.0, 3.0, 2.0, 2.5],  # improves until epoch 3, waits 1 at epoch 4
        alpha_c=[3.0, 3.1, 3.2, 2.0, 2.1],  # waits 1, 2, then improves, waits 1
    )
    # patience 2: waiting (wait >= 2) per epoch: [], [], [c], [a], [a]: a third of the layers from epoch 2 on
    assert stops(LayersPlateau("alpha", patience=2, fraction=0.5), rows) == [False] * 5
    assert stops(LayersPlateau("alpha", patience=2, fraction=0.3), rows) == [False, False, True, True, True]
    # patience 1: epoch 1: [c]; epoch 2: [a, c] -> two thirds
    assert replay(LayersPlateau("alpha", patience=1, fraction=0.5), rows).stop_epoch == 2
    # patience 1, every layer: only at epoch 4 do a (3), b (1) and c (1) all wait
    result = replay(LayersPlateau("alpha", patience=1, fraction=1.0), rows)
    assert result.stop_epoch == 4
    assert "3 of 3 layers (100%)" in result.decision.reason and "a, b, c" in result.decision.reason
    # restore: the epoch of the lowest mean alpha up to the stop
    assert result.restore_epoch == 3


def test_layers_plateau_min_delta_mode_max_and_failed_fits():
    rows = rows_of(rand_distance_a=[0.1, 0.2, 0.205, 0.21], rand_distance_b=[0.1, 0.3, 0.4, 0.5])
    assert (
        replay(LayersPlateau("rand_distance", mode="max", patience=2, fraction=0.5), rows).stop_epoch is None
    )
    tolerant = LayersPlateau("rand_distance", mode="max", patience=2, fraction=0.5, min_delta=0.01)
    assert replay(tolerant, rows).stop_epoch == 3  # a: +0.005, +0.005 are not improvements
    # A failed fit is not counted (neither waits nor improves); the share is over counted layers.
    failed = rows_of(alpha_a=[3.0, 3.5, 3.6], alpha_b=[3.0, 2.0, 1.0])
    for row in failed:
        if row["layer"] == "a" and row["epoch"] >= 1:
            row["status"] = "failed"
    assert replay(LayersPlateau("alpha", patience=1, fraction=0.5), failed).stop_epoch is None


def test_layers_plateau_state_round_trip_and_validation():
    rows = rows_of(alpha_a=[4.0, 3.0, 3.5, 3.6], alpha_b=[4.0, 3.0, 3.5, 3.6])
    reports = history_reports(rows)
    whole = LayersPlateau("alpha", patience=2, fraction=1.0)
    expected = [whole.update(r, epoch=e).stop for e, r in reports]
    first = LayersPlateau("alpha", patience=2, fraction=1.0)
    got = [first.update(r, epoch=e).stop for e, r in reports[:2]]
    resumed = LayersPlateau("alpha", patience=2, fraction=1.0)
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    got += [resumed.update(r, epoch=e).stop for e, r in reports[2:]]
    assert got == expected == [False, False, False, True]
    for bad in ({"fraction": 0.0}, {"fraction": 1.5}, {"patience": 0}, {"min_delta": -1.0}):
        with pytest.raises(ValueError):
            LayersPlateau("alpha", **bad)
    with pytest.raises(ValueError, match="needs randomize=True"):
        LayersPlateau("rand_distance").update(SpectralReport(options={"randomize": False}))


# --------------------------------------------------------------------------- TrapsAppear
def test_traps_appear_counts_traps_over_layers():
    rows = rows_of(num_traps_a=[0, 0, 1, 0, 1, 1], num_traps_b=[0, 0, 0, 0, 1, 0])
    assert stops(TrapsAppear(), rows) == [False, False, True, False, True, True]
    assert stops(TrapsAppear(min_traps=2), rows) == [False, False, False, False, True, False]
    assert stops(TrapsAppear(consecutive=2), rows) == [False, False, False, False, False, True]
    assert stops(TrapsAppear(start_from_epoch=3), rows) == [False, False, False, False, True, True]
    result = replay(TrapsAppear(min_traps=2), rows)
    assert (
        result.stop_epoch == 4 and "2 correlation traps in 2 layers: a (1), b (1)" in result.decision.reason
    )
    assert result.restore_epoch == 4  # monitors nothing: keeps the weights where it stopped
    with pytest.raises(ValueError, match="min_traps"):
        TrapsAppear(min_traps=0)


def test_traps_appear_needs_the_trap_columns():
    weights = {"fc.weight": np.random.default_rng(0).standard_normal((120, 60))}
    without = ww_callbacks.analyze(weights, seed=0, traps=False)
    with pytest.raises(ValueError, match="traps=True"):
        TrapsAppear().update(without)
    with_traps = ww_callbacks.analyze(weights, seed=0, traps=True)
    decision = TrapsAppear().update(with_traps)
    assert not decision.stop and "0 correlation traps in 1 layers" in decision.reason
    # A history written without traps: the rows have no trap count, so the replay says what is missing.
    with pytest.raises(ValueError, match="traps=True"):
        replay(TrapsAppear(), one_layer("rand_distance", [0.1, 0.2]))


def test_traps_appear_fires_on_a_planted_trap():
    # A random matrix with a few huge entries: its shuffled ESD has eigenvalues far above the MP bulk.
    rng = np.random.default_rng(0)
    w = rng.standard_normal((300, 150))
    w[rng.integers(0, 300, 4), rng.integers(0, 150, 4)] = 200.0
    clean = ww_callbacks.analyze({"fc.weight": rng.standard_normal((300, 150))}, seed=0)
    trapped = ww_callbacks.analyze({"fc.weight": w}, seed=0)
    assert clean.layers[0].num_traps == 0 and trapped.layers[0].num_traps >= 1
    assert [TrapsAppear().update(r).stop for r in (clean, trapped)] == [False, True]


# --------------------------------------------------------------------------- replay
def _write_history(path, reports) -> None:
    with HistoryWriter(path) as writer:
        for epoch, report in enumerate(reports):
            writer.write(report, epoch=epoch, step=10 * (epoch + 1))


def _reports(n: int = 6) -> list[SpectralReport]:
    """Real analyses of matrices that get more structured epoch by epoch."""
    rng = np.random.default_rng(1)
    base = {name: rng.standard_normal((96, 48)) for name in ("fc1.weight", "fc2.weight")}
    u, v = rng.standard_normal((96, 1)), rng.standard_normal((1, 48))
    return [
        ww_callbacks.analyze({k: w + 0.6 * e * (u @ v) for k, w in base.items()}, seed=e, traps=True)
        for e in range(n)
    ]


@pytest.mark.parametrize(
    "make",
    [
        lambda: Plateau("alpha", mode="min", patience=2),  # never stops on these reports
        lambda: Plateau("alpha_weighted", mode="min", patience=2),
        lambda: Slowdown("rand_distance", window=2, ratio=0.5),
        lambda: LayersPlateau("log_alpha_norm", patience=1, fraction=0.5),
        lambda: AnyOf(TrapsAppear(min_traps=3), AlphaBelow(3.0)),
        lambda: AllOf(Plateau("log_norm", mode="min", patience=1), Slowdown("alpha", mode="min", window=1)),
    ],
)
def test_replay_of_a_history_file_matches_the_live_rule(tmp_path, make):
    reports = _reports()
    live, decisions = make(), []
    for epoch, report in enumerate(reports):
        decisions.append(live.update(report, epoch=epoch))
        if decisions[-1].stop:
            break
    path = tmp_path / "ww_history.jsonl"
    _write_history(path, reports)
    for history in (path, load_history(path, as_pandas=False), load_history(path, as_pandas=True), reports):
        result = replay(make(), history)
        assert [d for _, d in result.decisions] == decisions
        assert result.stop_epoch == (len(decisions) - 1 if decisions[-1].stop else None)
    # The summaries the rules see are those of the history file (what the CLI and the plots show).
    rebuilt = [r.summary for _, r in history_reports(path)]
    for mine, theirs in zip(rebuilt, summarize_history(load_history(path, as_pandas=False)), strict=True):
        for metric, value in mine.items():
            assert value == pytest.approx(theirs[metric], rel=1e-12, nan_ok=True)


def test_replay_semantics():
    rows = one_layer("alpha", [4.0, 3.0, 2.5, 2.6, 2.7, 2.8, 2.4])
    result = replay(Plateau("alpha", mode="min", patience=2), rows)
    assert isinstance(result, Replay) and result.stopped
    assert (result.stop_epoch, result.restore_epoch) == (4, 2)
    assert [e for e, _ in result.decisions] == [0, 1, 2, 3, 4]  # nothing after the stop
    never = replay(Plateau("alpha", mode="min", patience=5), rows)
    assert (never.stop_epoch, never.restore_epoch, never.decision) == (None, 6, None)
    # The rule is reset first (a used rule replays like a fresh one) unless reset=False.
    rule = Plateau("alpha", mode="min", patience=2)
    replay(rule, rows)
    assert replay(rule, rows).stop_epoch == 4
    more = one_layer("alpha", [2.6, 2.7])
    assert replay(rule, more).stop_epoch is None
    replay(rule, rows)
    assert replay(rule, more, reset=False).stop_epoch == 0  # best 2.5 and the wait count carried over
    # Rows repeated for an (epoch, layer) (a resumed run) keep the last one written.
    resumed = rows[:4] + [{**rows[3], "alpha": 2.0}] + rows[4:]
    assert replay(Plateau("alpha", mode="min", patience=2), resumed).stop_epoch == 5
    # Reports and (epoch, report) pairs are accepted as they are.
    reports = [r for _, r in history_reports(rows)]
    assert replay(Plateau("alpha", mode="min", patience=2), reports).stop_epoch == 4
    pairs = [(10 + e, r) for e, r in enumerate(reports)]
    assert replay(Plateau("alpha", mode="min", patience=2), pairs[::-1]).stop_epoch == 14
    assert replay(Plateau("alpha", mode="min", patience=2), []).restore_epoch is None


def test_replay_rejects_what_is_not_a_history():
    with pytest.raises(TypeError, match="StoppingRule"):
        replay("Plateau", [])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="per-layer rows"):
        replay(Plateau("alpha"), [{"alpha": 3.0}])
    with pytest.raises(ValueError, match="needs randomize=True"):
        replay(Plateau("rand_distance", mode="max"), one_layer("alpha", [3.0]))


def test_history_reports_reads_json_nulls_and_infers_options():
    rows = [
        {
            "epoch": 0,
            "layer": "fc",
            "alpha": None,
            "status": "failed",
            "rand_distance": 0.2,
            "num_traps": None,
        },
        {"epoch": 0, "layer": "out", "alpha": 3.0, "rand_distance": None, "mp_softrank": 0.5},
    ]
    ((epoch, report),) = history_reports(rows)
    assert epoch == 0 and [lr.longname for lr in report.layers] == ["fc", "out"]
    assert math.isnan(report.layers[0].alpha) and report.num_summarized == 1
    assert report.options == {"randomize": True, "traps": False, "mp_fit": True}
    assert report.summary["alpha"] == 3.0 and math.isnan(report.summary["rand_distance"])
    assert isinstance(report.layers[1], LayerResult) and report.layers[1].mp_softrank == 0.5


# --------------------------------------------------------------------------- recommended
def test_recommended_is_a_fresh_rule_every_time():
    a, b = recommended(), recommended()
    assert isinstance(a, StoppingRule) and a is not b and repr(a) == repr(b)
    reports = _reports(3)
    for epoch, report in enumerate(reports):
        a.update(report, epoch=epoch)
    assert recommended().state_dict() == b.state_dict()  # using one does not change the next
