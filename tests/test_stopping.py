"""Data-free stopping rules (`ww_callbacks.stopping`): each rule stops exactly when it should."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from ww_callbacks.spectral.report import LayerResult, SpectralReport
from ww_callbacks.stopping import AllOf, AlphaBelow, AnyOf, NonFinite, Plateau, StopDecision, StoppingRule


def make_report(alphas, *, statuses=None, randomize=True, **summary_metrics) -> SpectralReport:
    """A report whose layers have the given alphas (and, for every layer, the given other metrics)."""
    statuses = statuses or ["success"] * len(alphas)
    layers = []
    for i, (alpha, status) in enumerate(zip(alphas, statuses, strict=True)):
        lr = LayerResult(layer_id=i, name=f"fc{i}", longname=f"net.fc{i}", layer_type="dense", N=64, M=32)
        lr.alpha = float(alpha)
        lr.status = status
        for metric, value in summary_metrics.items():
            setattr(lr, metric, float(value))
        layers.append(lr)
    return SpectralReport(layers=layers, options={"randomize": randomize, "mp_fit": False})


def feed(rule: StoppingRule, reports, start_epoch: int = 0) -> list[StopDecision]:
    return [rule.update(r, epoch=start_epoch + i) for i, r in enumerate(reports)]


def first_stop(decisions) -> int | None:
    return next((i for i, d in enumerate(decisions) if d.stop), None)


# --------------------------------------------------------------------------- AlphaBelow
def test_alpha_below_mean_stops_at_first_epoch_below_threshold():
    means = [5.0, 3.4, 2.6, 2.05, 1.95, 1.7]
    reports = [make_report([m - 0.3, m + 0.3]) for m in means]
    decisions = feed(AlphaBelow(2.0), reports)
    assert first_stop(decisions) == 4
    assert "1.950" in decisions[4].reason and "below 2" in decisions[4].reason
    assert "over-trained" in decisions[4].reason
    assert decisions[4].rule == "AlphaBelow"


def test_alpha_below_ignores_failed_fits():
    # weightwatcher would average the failed fit's alpha=-1 in; we only count successful fits.
    report = make_report([3.0, 2.5, -1.0], statuses=["success", "success", "failed"])
    assert not AlphaBelow(2.0).update(report).stop
    nothing = make_report([-1.0, -1.0], statuses=["failed", "non-finite"])
    decision = AlphaBelow(2.0).update(nothing)
    assert not decision.stop and "no layer" in decision.reason


def test_alpha_below_fraction():
    rule = AlphaBelow(2.0, reduce="fraction", fraction=0.5)
    assert not rule.update(make_report([3.0, 3.0, 3.0, 1.5])).stop  # 25 %
    decision = rule.update(make_report([3.0, 1.5, 1.8, 3.0]))  # 50 %, mean 2.3 still above
    assert decision.stop
    assert "2 of 4 layers" in decision.reason and "net.fc1 (1.50)" in decision.reason
    assert not AlphaBelow(2.0).update(make_report([3.0, 1.5, 1.8, 3.0])).stop


def test_alpha_below_consecutive_and_start_epoch():
    below, above = make_report([1.5]), make_report([2.5])
    rule = AlphaBelow(2.0, consecutive=2)
    assert [d.stop for d in feed(rule, [below, above, below, below])] == [False, False, False, True]
    assert "2 analyzed epochs in a row" in rule.last_decision.reason
    late = AlphaBelow(2.0, start_from_epoch=3)
    assert first_stop(feed(late, [below] * 5)) == 3


def test_alpha_below_validates_arguments():
    with pytest.raises(ValueError, match="reduce"):
        AlphaBelow(reduce="median")
    with pytest.raises(ValueError, match="fraction"):
        AlphaBelow(reduce="fraction", fraction=0.0)
    with pytest.raises(ValueError, match="consecutive"):
        AlphaBelow(consecutive=0)


def test_alpha_below_repr_shows_every_argument():
    rule = AlphaBelow(1.8, reduce="fraction", fraction=0.25, consecutive=3, start_from_epoch=5)
    assert repr(rule) == (
        "AlphaBelow(threshold=1.8, reduce='fraction', fraction=0.25, consecutive=3, start_from_epoch=5)"
    )


def test_alpha_below_best_epoch_is_last_before_over_training():
    history = [{"epoch": e, "alpha": a} for e, a in enumerate([4.0, 3.0, 2.2, 1.9, 1.5])]
    assert AlphaBelow(2.0).best_epoch(history) == 2
    assert Plateau("alpha", mode="min").best_epoch(history) == 4


# --------------------------------------------------------------------------- Plateau
def _lightning_early_stopping_decisions(values, *, mode, patience, min_delta):
    """Lightning's own EarlyStopping criterion on the same sequence: the reference semantics."""
    torch = pytest.importorskip("torch")
    from lightning.pytorch.callbacks import EarlyStopping

    es = EarlyStopping(monitor="m", mode=mode, patience=patience, min_delta=min_delta)
    out = []
    for v in values:
        stop, _ = es._evaluate_stopping_criteria(torch.tensor(v, dtype=torch.float64))
        out.append((bool(stop), es.wait_count))
    return out


@pytest.mark.parametrize("mode", ["min", "max"])
@pytest.mark.parametrize(("patience", "min_delta"), [(1, 0.0), (2, 0.0), (3, 0.05), (4, 0.2)])
def test_plateau_matches_lightning_early_stopping(mode, patience, min_delta):
    rng = np.random.default_rng(patience * 10 + int(min_delta * 100))
    # A noisy curve that improves, then flattens: both branches (improve / wait) are exercised.
    trend = np.concatenate([np.linspace(5.0, 3.0, 8), np.full(12, 3.0)])
    values = trend + rng.normal(scale=0.1, size=trend.size)
    if mode == "max":
        values = -values
    expected = _lightning_early_stopping_decisions(values, mode=mode, patience=patience, min_delta=min_delta)
    rule = Plateau("rand_distance", mode=mode, patience=patience, min_delta=min_delta)
    got = []
    for epoch, v in enumerate(values):
        got.append((rule.update(make_report([3.0], rand_distance=v), epoch=epoch).stop, rule.wait_count))
    assert got == expected
    assert any(stop for stop, _ in got)


def test_plateau_reason_and_best():
    rule = Plateau("alpha", mode="min", patience=2)
    decisions = feed(rule, [make_report([a]) for a in [4.0, 3.0, 3.5, 3.2]])
    assert first_stop(decisions) == 3
    assert "did not improve" in decisions[3].reason and "best 3.0000 at epoch 1" in decisions[3].reason
    assert rule.best_score == 3.0 and rule.best_epoch_seen == 1


def test_plateau_skips_nan_and_early_epochs():
    rule = Plateau("alpha", patience=1, start_from_epoch=2)
    nan_report = make_report([-1.0], statuses=["failed"])
    decisions = feed(rule, [make_report([3.0]), make_report([4.0]), make_report([3.0]), nan_report])
    assert [d.stop for d in decisions] == [False, False, False, False]
    assert rule.wait_count == 0 and rule.best_score == 3.0  # epochs 0-1 ignored, NaN not counted
    assert rule.update(make_report([3.1]), epoch=4).stop


def test_plateau_unknown_or_missing_metric():
    with pytest.raises(ValueError, match="unknown metric 'val_loss'"):
        Plateau("val_loss")
    with pytest.raises(ValueError, match="mode"):
        Plateau("alpha", mode="up")
    rule = Plateau("rand_distance")
    with pytest.raises(ValueError, match="randomize=True"):
        rule.update(make_report([3.0], randomize=False))


# --------------------------------------------------------------------------- NonFinite
def test_non_finite_stops_at_the_first_report_with_nan_or_inf_weights():
    fine = make_report([3.0, 2.5])
    one_bad = make_report([3.0, math.nan], statuses=["success", "non-finite"])
    all_bad = make_report([math.nan, math.nan], statuses=["non-finite", "non-finite"])
    failed_fit = make_report(
        [math.nan, 3.0], statuses=["failed", "success"]
    )  # a failed fit is not divergence
    decisions = feed(NonFinite(), [fine, failed_fit, one_bad, all_bad])
    assert first_stop(decisions) == 2
    assert (
        decisions[2].reason == "1 of 2 layers hold NaN or Inf weights at epoch 2 (net.fc1): training diverged"
    )
    assert decisions[2].rule == "NonFinite"
    assert one_bad.summary["num_nonfinite_layers"] == 1 and fine.summary["num_nonfinite_layers"] == 0
    assert first_stop(feed(NonFinite(min_layers=2), [fine, one_bad, all_bad])) == 2
    with pytest.raises(ValueError, match="min_layers"):
        NonFinite(min_layers=0)
    assert repr(NonFinite()) == "NonFinite(min_layers=1)"
    assert NonFinite().monitor is None


def test_non_finite_inside_any_of_and_exported():
    import ww_callbacks

    assert ww_callbacks.NonFinite is NonFinite and "NonFinite" in ww_callbacks.__all__
    rule = AnyOf(AlphaBelow(2.0), NonFinite())
    bad = make_report([3.0, math.nan], statuses=["success", "non-finite"])
    decisions = feed(rule, [make_report([3.0, 3.0]), bad])
    assert first_stop(decisions) == 1 and decisions[1].reason.startswith("NonFinite: 1 of 2 layers")
    assert rule.monitor == "alpha"  # AlphaBelow still speaks for restore_best_weights
    resumed = AnyOf(AlphaBelow(2.0), NonFinite())
    resumed.load_state_dict(json.loads(json.dumps(rule.state_dict())))
    assert resumed.state_dict() == rule.state_dict()


# --------------------------------------------------------------------------- combinations
def test_any_of_stops_with_first_rule_and_advances_all():
    plateau = Plateau("rand_distance", mode="max", patience=2)
    rule = AnyOf(AlphaBelow(2.0), plateau)
    reports = [make_report([a], rand_distance=r) for a, r in [(3.0, 0.1), (2.8, 0.2), (2.5, 0.2), (2.4, 0.2)]]
    decisions = feed(rule, reports)
    assert first_stop(decisions) == 3
    assert decisions[3].reason.startswith("Plateau: rand_distance did not improve")
    assert plateau.num_checks == 4 and rule.rules[0].num_checks == 4
    both = AnyOf(AlphaBelow(2.0), AlphaBelow(1.8)).update(make_report([1.5]))
    assert both.reason.count("AlphaBelow:") == 2
    assert rule.monitor == "alpha" and rule.mode == "min"


def test_all_of_needs_every_rule():
    rule = AllOf(AlphaBelow(2.0), Plateau("alpha", patience=1))
    decisions = feed(rule, [make_report([a]) for a in [2.5, 1.9, 1.95]])
    # epoch 1: alpha below 2 but still improving; epoch 2: below 2 and no improvement
    assert [d.stop for d in decisions] == [False, False, True]
    assert "waiting on Plateau" in decisions[1].reason
    assert " and " in decisions[2].reason


def test_combinations_validate_inputs():
    with pytest.raises(ValueError, match="at least one"):
        AnyOf()
    with pytest.raises(TypeError, match="StoppingRule"):
        AllOf(AlphaBelow(), "alpha")


# --------------------------------------------------------------------------- state
@pytest.mark.parametrize(
    "build",
    [
        lambda: Plateau("rand_distance", mode="max", patience=3, min_delta=1e-3),
        lambda: AlphaBelow(2.0, consecutive=3),
        lambda: AnyOf(
            AlphaBelow(1.0, consecutive=2), Plateau("rand_distance", mode="max", patience=3, min_delta=1e-3)
        ),
    ],
)
def test_resumed_rule_continues_like_an_uninterrupted_one(build):
    rng = np.random.default_rng(5)
    alphas = np.concatenate([np.linspace(4, 1.5, 6), np.full(6, 1.5)]) + rng.normal(scale=0.05, size=12)
    rands = np.concatenate([np.linspace(0.1, 0.5, 6), np.full(6, 0.5)]) + rng.normal(scale=1e-4, size=12)
    reports = [make_report([a], rand_distance=r) for a, r in zip(alphas, rands, strict=True)]
    whole = [(d.stop, d.reason) for d in feed(build(), reports)]

    first = build()
    head = feed(first, reports[:5])
    state = json.loads(json.dumps(first.state_dict()))  # plain values only
    resumed = build()
    resumed.load_state_dict(state)
    tail = feed(resumed, reports[5:], start_epoch=5)
    assert [(d.stop, d.reason) for d in head + tail] == whole
    assert any(stop for stop, _ in whole)

    resumed.reset()
    assert resumed.state_dict() == build().state_dict()


def test_combined_state_must_match_structure():
    with pytest.raises(ValueError, match="2 rules"):
        AnyOf(AlphaBelow()).load_state_dict(AnyOf(AlphaBelow(), AlphaBelow()).state_dict())


# --------------------------------------------------------------------------- user rules
def test_user_rule_from_base_class():
    class TooManyFailedFits(StoppingRule):
        def check(self, report, *, epoch):
            return report.num_summarized < len(report.layers) / 2

    rule = TooManyFailedFits()
    assert not rule.update(make_report([3.0, 3.0])).stop
    decision = rule.update(make_report([-1, -1, 3], statuses=["failed", "failed", "success"]))
    assert decision.stop and decision.rule == "TooManyFailedFits" and "epoch 1" in decision.reason
    assert rule.monitor is None and rule.best_epoch([{"epoch": 0, "alpha": 1.0}]) is None
    with pytest.raises(NotImplementedError):
        StoppingRule().update(make_report([3.0]))


def test_is_better_ignores_non_finite():
    rule = Plateau("alpha", mode="max")
    assert not rule.is_better(math.nan, None)
    assert rule.is_better(1.0, None) and rule.is_better(2.0, 1.0) and not rule.is_better(1.0, 2.0)
