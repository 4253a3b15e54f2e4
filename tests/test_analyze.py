"""`analyze()`: the public API, bad input, RNG hygiene, and the invariants of the randomized metrics."""

from __future__ import annotations

import math
import random
import sys
import warnings

import numpy as np
import pytest

import ww_callbacks
from ww_callbacks.spectral.metrics import jensen_shannon_distance


def _weights(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "fc1.weight": rng.standard_normal((300, 100)).astype(np.float32),
        "fc2.weight": (rng.standard_t(2.5, size=(200, 120)) * 0.05).astype(np.float32),
        "conv.weight": rng.standard_normal((32, 16, 3, 3)).astype(np.float32),
    }


def test_report_api():
    report = ww_callbacks.analyze(_weights(), seed=0)
    assert [lr.name for lr in report.layers] == ["fc1", "fc2", "conv"]
    assert report["fc2"] is report.layers[1]
    rows = report.to_rows()
    assert len(rows) == 3 and rows[0]["name"] == "fc1" and "evals" not in rows[0]
    assert set(report.summary) == {
        "alpha",
        "alpha_weighted",
        "log_norm",
        "log_spectral_norm",
        "log_alpha_norm",
        "stable_rank",
        "rand_distance",
        "num_nonfinite_layers",
    }
    assert report.summary["num_nonfinite_layers"] == 0
    assert report.num_summarized == 3
    assert report.summary["alpha"] == pytest.approx(np.mean([lr.alpha for lr in report.layers]))
    df = report.to_pandas()
    assert list(df["name"]) == ["fc1", "fc2", "conv"]
    restored = ww_callbacks.SpectralReport.from_dict(report.to_dict(include_arrays=True))
    assert restored.summary == report.summary
    np.testing.assert_array_equal(restored.layers[0].evals, report.layers[0].evals)


def test_mp_fit_adds_columns_and_summary():
    report = ww_callbacks.analyze(_weights(), seed=0, mp_fit=True)
    assert "mp_softrank" in report.summary
    for lr in report.layers:
        assert lr.num_spikes >= 0 and lr.bulk_max > lr.bulk_min >= 0 and lr.sigma_mp > 0


def test_randomize_off_leaves_random_columns_nan():
    report = ww_callbacks.analyze(_weights(), randomize=False)
    assert "rand_distance" not in report.summary
    assert all(math.isnan(lr.rand_distance) for lr in report.layers)


def test_seed_reproducible_and_generator_accepted():
    a = ww_callbacks.analyze(_weights(), seed=7)
    b = ww_callbacks.analyze(_weights(), rng=np.random.default_rng(7))
    c = ww_callbacks.analyze(_weights(), seed=8)
    assert [lr.rand_distance for lr in a] == [lr.rand_distance for lr in b]
    assert [lr.rand_distance for lr in a] != [lr.rand_distance for lr in c]


def test_threads_do_not_change_results():
    a = ww_callbacks.analyze(_weights(), seed=3, n_jobs=1)
    b = ww_callbacks.analyze(_weights(), seed=3, n_jobs=2)
    assert _same_rows(a.to_rows(), b.to_rows())


def _same_rows(rows_a, rows_b):
    def norm(v):
        return "nan" if isinstance(v, float) and math.isnan(v) else v

    return [{k: norm(v) for k, v in r.items()} for r in rows_a] == [
        {k: norm(v) for k, v in r.items()} for r in rows_b
    ]


def test_global_rng_state_untouched():
    torch = pytest.importorskip("torch")
    np.random.seed(11)
    random.seed(11)
    torch.manual_seed(11)
    expected = (np.random.random(), random.random(), torch.rand(1).item())
    np.random.seed(11)
    random.seed(11)
    torch.manual_seed(11)
    weights = _weights()
    weights["t.weight"] = torch.randn(80, 40, generator=torch.Generator().manual_seed(0))
    ww_callbacks.analyze(weights, mp_fit=True)
    ww_callbacks.analyze(weights, rng=np.random.RandomState(0), n_random=3)
    assert (np.random.random(), random.random(), torch.rand(1).item()) == expected


def test_n_random_gives_error_bar():
    report = ww_callbacks.analyze(_weights(), seed=0, n_random=8)
    for lr in report.layers:
        assert lr.rand_distance_std > 0
        assert lr.rand_distance_std < lr.rand_distance
    single = ww_callbacks.analyze(_weights(), seed=0)
    assert all(math.isnan(lr.rand_distance_std) for lr in single.layers)
    with pytest.raises(ValueError, match="n_random"):
        ww_callbacks.analyze(_weights(), n_random=0)


def test_randomized_invariants():
    report = ww_callbacks.analyze(_weights(), seed=1)
    for lr in report.layers:
        # a shuffle permutes the entries: the Frobenius norm, i.e. the sum of eigenvalues, is unchanged
        pooled = lr.rand_evals.reshape(-1)
        replicas = pooled.size // lr.evals.size
        assert pooled.sum() / replicas == pytest.approx(lr.evals.sum(), rel=1e-10)
        assert 0 <= lr.rand_distance <= math.sqrt(math.log(2))
    p, q = report.layers[0].evals, report.layers[0].rand_evals
    assert jensen_shannon_distance(p, q) == pytest.approx(jensen_shannon_distance(q, p), rel=1e-12)
    assert jensen_shannon_distance(p, p) == 0.0


def test_bad_layers_get_a_status_and_the_others_are_analyzed():
    rng = np.random.default_rng(0)
    nan_w = rng.standard_normal((40, 30))
    nan_w[3, 4] = np.nan
    inf_w = rng.standard_normal((40, 30))
    inf_w[0, 0] = np.inf
    report = ww_callbacks.analyze(
        {
            "nan.weight": nan_w,
            "inf.weight": inf_w,
            "zero.weight": np.zeros((40, 30)),
            "row.weight": rng.standard_normal((1, 500)),
            "tiny.weight": rng.standard_normal((5, 4)),
            "scaled.weight": rng.standard_normal((40, 30)) * 1e-5,  # every eigenvalue below the fit threshold
            "good.weight": rng.standard_normal((60, 40)),
        },
        seed=0,
    )
    status = {lr.name: lr.status for lr in report.layers}
    assert status == {
        "nan": "non-finite",
        "inf": "non-finite",
        "zero": "zero",
        "row": "too-small",
        "tiny": "too-small",
        "scaled": "failed",
        "good": "success",
    }
    assert all(lr.reason for lr in report.layers if lr.status != "success")
    assert report.num_summarized == 1
    assert report.summary["alpha"] == report["good"].alpha
    scaled = report["scaled"]
    assert math.isnan(scaled.alpha) and scaled.log_norm < 0 and not math.isnan(scaled.rand_distance)


def test_max_evals_and_max_n_skip_layers():
    rng = np.random.default_rng(0)
    report = ww_callbacks.analyze(
        {"a.weight": rng.standard_normal((60, 40)), "b.weight": rng.standard_normal((200, 9))},
        max_evals=30,
        max_N=100,
    )
    assert [lr.status for lr in report.layers] == ["too-large", "too-large"]
    assert "max_evals" in report["a"].reason and "max_N" in report["b"].reason


def test_unsupported_model_type_error():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        ww_callbacks.analyze(object())
    # a string is a path now (issue 13): a missing file is a ValueError naming it, not a type error
    with pytest.raises(ValueError, match="model.pt"):
        ww_callbacks.analyze("model.pt")


def test_model_without_layers_warns_and_returns_empty_report():
    with pytest.warns(RuntimeWarning, match="no analyzable layer"):
        report = ww_callbacks.analyze({"bias": np.ones(10)})
    assert len(report) == 0 and report.num_summarized == 0
    counts = {"num_nonfinite_layers": 0}
    assert all(math.isnan(v) for k, v in report.summary.items() if k not in counts)
    assert {k: report.summary[k] for k in counts} == counts


def test_checkpoint_dicts_are_unwrapped_like_the_cli_does():
    # Training loops save {"model": state_dict, ...}, DeepSpeed {"module": ...}, Lightning {"state_dict": ...}:
    # analyze() finds the same layers (and numbers) as for the bare state dict.
    state = _weights()
    plain = ww_callbacks.analyze(state, seed=0)
    assert len(plain) == len(state)
    for key in ("state_dict", "model_state_dict", "model", "module"):
        wrapped = ww_callbacks.analyze({key: state, "epoch": 3, "optimizer": {"lr": 0.1}}, seed=0)
        assert [lr.name for lr in wrapped] == [lr.name for lr in plain], key
        np.testing.assert_array_equal([lr.alpha for lr in wrapped], [lr.alpha for lr in plain])


def test_layer_filters():
    w = _weights()
    assert [lr.name for lr in ww_callbacks.analyze(w, layers=["fc*"], randomize=False)] == ["fc1", "fc2"]
    assert [lr.name for lr in ww_callbacks.analyze(w, layers=["-fc1"], randomize=False)] == ["fc2", "conv"]
    assert [lr.name for lr in ww_callbacks.analyze(w, layers="conv2d", randomize=False)] == ["conv"]


def test_quiet_no_stdout(capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ww_callbacks.analyze(_weights(), seed=0, mp_fit=True)
    assert capsys.readouterr().out == ""


def test_import_is_framework_free():
    import subprocess

    code = (
        "import sys, ww_callbacks; bad = [m for m in ('torch', 'keras', 'tensorflow', 'jax', 'wandb', 'lightning', "
        "'pytorch_lightning', 'matplotlib', 'pandas') if m in sys.modules]; print(bad); assert not bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_rank_deficient_layer_gets_exact_rank():
    """Numerically singular slices are recomputed with an SVD: rank and sv_min are those of the SVD."""
    rng = np.random.default_rng(5)
    w = rng.standard_normal((120, 40))
    w[:, 30:] = w[:, :10]  # ten duplicated columns: rank 30
    lr = ww_callbacks.analyze({"fc.weight": w}, randomize=False)["fc"]
    sv = np.linalg.svd(w, compute_uv=False)
    assert lr.matrix_rank == np.linalg.matrix_rank(w) == 30
    assert lr.sv_min == pytest.approx(sv.min(), abs=1e-12 * sv.max())
    assert lr.rank_loss == 10


@pytest.mark.parametrize("shape", [(1, 1500, 800), (1, 800, 1500), (2, 1100, 1000)])
def test_blocked_gram_route_matches_svd(shape):
    """Large slices accumulate their Gram matrix block by block: same eigenvalues as an SVD (~1e-13)."""
    from ww_callbacks.spectral import esd

    w = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    assert shape[1] * shape[2] >= esd.BLOCKED_MIN_ENTRIES
    expected = np.linalg.svd(w.astype(np.float64) * 0.5**0.5, compute_uv=False)[..., ::-1] ** 2
    got = esd.slice_eigenvalues(w, 0.5**0.5)
    assert got.shape == expected.shape
    assert np.max(np.abs(got - expected)) <= 1e-13 * expected.max()
