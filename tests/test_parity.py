"""End-to-end parity with weightwatcher 0.7.7: same models, same weights, every column compared.

Deterministic columns must agree to 1e-9 (relative). Randomized columns agree exactly under the RandomState
protocol (weightwatcher shuffles with numpy's global RandomState; we draw the same permutations from a RandomState
in the same state) and statistically with our own Generator.
"""

from __future__ import annotations

import contextlib
import io
import math

import numpy as np
import pytest

import ww_callbacks

torch = pytest.importorskip("torch")
ww = pytest.importorskip("weightwatcher")

from _layers_utils import TORCH_MODELS  # noqa: E402

pytestmark = pytest.mark.parity

DETERMINISTIC = [
    "N",
    "M",
    "rf",
    "Q",
    "num_evals",
    "sv_max",
    "sv_min",
    "rank_loss",
    "weak_rank_loss",
    "lambda_max",
    "alpha",
    "xmin",
    "xmax",
    "D",
    "sigma",
    "num_pl_spikes",
    "norm",
    "log_norm",
    "spectral_norm",
    "log_spectral_norm",
    "alpha_weighted",
    "log_alpha_norm",
    "stable_rank",
    "matrix_rank",
    "entropy",
]
MP = ["num_spikes", "sigma_mp", "mp_softrank", "W_scale", "bulk_max", "bulk_min"]
RANDOMIZED = [
    "max_rand_eval",
    "rand_distance",
    "ww_softrank",
    "ww_maxdist",
    "rand_num_spikes",
    "num_traps",
    "rand_sigma_mp",
    "rand_mp_softrank",
    "rand_W_scale",
    "rand_bulk_max",
    "rand_bulk_min",
]
SUMMARY = [
    "alpha",
    "alpha_weighted",
    "log_norm",
    "log_spectral_norm",
    "log_alpha_norm",
    "stable_rank",
    "mp_softrank",
]


def _ww_analyze(model, seed, **kwargs):
    np.random.seed(seed)  # weightwatcher shuffles with the global RandomState
    watcher = ww.WeightWatcher(model=model)
    with contextlib.redirect_stdout(io.StringIO()):
        details = watcher.analyze(**kwargs)
        summary = watcher.get_summary(details)
    return details, summary


def _close(ours: float, theirs: float, rel: float = 1e-9, abs_tol: float = 0.0) -> bool:
    if theirs is None or (isinstance(theirs, float) and math.isnan(theirs)):
        return math.isnan(ours)
    return math.isclose(float(ours), float(theirs), rel_tol=rel, abs_tol=abs_tol)


def _abs_tol(col: str, lr) -> float:
    """Columns that cancel: a distance between (nearly) equal spectra is rounding noise, sqrt'ed."""
    if col == "rand_distance":
        return 1e-7  # e.g. 1-wide conv slices, whose shuffle cannot change the spectrum: ~1e-9 on both sides
    if col == "ww_maxdist":
        return 1e-12 * lr.lambda_max
    return 0.0


def _compare(model_name: str, seed: int = 0):
    model = TORCH_MODELS[model_name]()
    details, summary = _ww_analyze(model, seed, randomize=True, mp_fit=True)
    report = ww_callbacks.analyze(model, rng=np.random.RandomState(seed), mp_fit=True)
    ours = {
        lr.layer_id: lr
        for lr in report.layers
        if lr.ww_parity and lr.status not in ("too-small", "too-large")
    }
    theirs = {int(row["layer_id"]): row for _, row in details.iterrows()}
    tied = {
        name
        for lr in report.layers
        for name in ww_callbacks.snapshot(model, layers=[lr.longname])[0].extra.get("tied", [])
    }
    missing = {lid for lid, row in theirs.items() if lid not in ours and row["longname"] not in tied}
    assert not missing, f"weightwatcher analyzed layers we did not: {missing}"
    assert set(ours) <= set(theirs), f"we analyzed layers weightwatcher skipped: {set(ours) - set(theirs)}"
    mismatches = []
    for lid, lr in ours.items():
        row = theirs[lid]
        assert (
            lr.name == row["name"] and lr.longname == row["longname"] and lr.layer_type == row["layer_type"]
        )
        if lr.status == "failed":
            assert row["alpha"] == -1 and row["status"] == "failed"
            columns = ["N", "M", "rf", "Q", "norm", "log_norm", "log_spectral_norm", *RANDOMIZED]
        else:
            assert lr.status == row["status"] == "success"
            assert lr.warning == row["warning"]
            columns = DETERMINISTIC + MP + RANDOMIZED
        for col in columns:
            if not _close(getattr(lr, col), row[col], abs_tol=_abs_tol(col, lr)):
                mismatches.append((lr.longname, col, getattr(lr, col), row[col]))
    assert not mismatches, mismatches
    return report, summary


@pytest.mark.parametrize(
    "model_name",
    ["mlp", "cnn", "embedding", "gpt2", "small_linear", "attention", "narrow_linear", "huge_linear"],
)
def test_every_column_matches_weightwatcher(model_name):
    _compare(model_name, seed=3)


def test_summary_matches_weightwatcher_when_every_fit_succeeds():
    report, summary = _compare("mlp", seed=1)
    assert report.num_summarized == len(report.layers)
    for key in SUMMARY:
        assert _close(report.summary[key], summary[key]), key
    # the mean rand_distance over layers, which weightwatcher's summary leaves out
    assert report.summary["rand_distance"] == pytest.approx(
        np.mean([lr.rand_distance for lr in report.layers])
    )


def test_trained_mlp_matches_weightwatcher():
    """A few hundred Adam steps make the spectra heavy-tailed, which exercises other xmin choices."""
    from _layers_utils import mnist_mlp

    model = mnist_mlp(seed=2)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(512, 784, generator=gen)
    y = torch.randint(0, 10, (512,), generator=gen)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(200):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    TORCH_MODELS["_trained"] = lambda: model
    try:
        _compare("_trained", seed=5)
    finally:
        TORCH_MODELS.pop("_trained")


def test_generator_draws_agree_statistically():
    """With our own Generator the randomized columns are a different draw: compare means over 30 seeds."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(150, 400, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.from_numpy(np.random.default_rng(0).standard_normal((400, 150))))
    k = 30
    ours = {c: [] for c in ("rand_distance", "max_rand_eval", "ww_softrank", "rand_num_spikes")}
    theirs = {c: [] for c in ours}
    for seed in range(k):
        lr = ww_callbacks.analyze(model, seed=seed).layers[0]
        row = _ww_analyze(model, 1000 + seed, randomize=True)[0].iloc[0]
        for c in ours:
            ours[c].append(float(getattr(lr, c)))
            theirs[c].append(float(row[c]))
    for c in ("rand_distance", "max_rand_eval", "ww_softrank"):
        a, b = np.array(ours[c]), np.array(theirs[c])
        se = math.sqrt(a.var(ddof=1) / k + b.var(ddof=1) / k)
        assert abs(a.mean() - b.mean()) <= 3 * se, (c, a.mean(), b.mean(), se)
    assert sorted(set(ours["rand_num_spikes"])) == sorted(set(theirs["rand_num_spikes"])) == [0.0]
