"""The torch eigensolver (``eigensolver="torch"``): the numpy path's numbers, computed where the weights live.

Tested on the CPU (this machine has no GPU): the same shuffles, eigenvalues equal to rounding, every per-layer column
within 1e-9 relative of the numpy path in float64, the callbacks' option, and float32 as an opt-in.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import ww_callbacks  # noqa: E402
from ww_callbacks.engine import SpectralMonitor  # noqa: E402
from ww_callbacks.spectral import esd  # noqa: E402


def _model() -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return torch.nn.ModuleDict(
            {
                "tall": torch.nn.Linear(100, 300),
                "wide": torch.nn.Linear(300, 50),
                "conv": torch.nn.Conv2d(3, 16, 3),
                "conv1x1": torch.nn.Conv2d(64, 32, 1),
                "embed": torch.nn.Embedding(500, 64),
                "attn": torch.nn.MultiheadAttention(32, 4),
            }
        )


def _rows_close(a: ww_callbacks.SpectralReport, b: ww_callbacks.SpectralReport, rel: float) -> list[str]:
    bad = []
    for x, y in zip(a.layers, b.layers, strict=True):
        for column, value in x.to_row().items():
            other = y.to_row()[column]
            if isinstance(value, float) and (math.isfinite(value) or math.isfinite(other)):
                if not math.isclose(value, other, rel_tol=rel, abs_tol=0.0):
                    bad.append(f"{x.longname}.{column}: {value} vs {other}")
            elif value != other and not (
                isinstance(value, float) and math.isnan(value) and math.isnan(other)
            ):
                bad.append(f"{x.longname}.{column}: {value!r} vs {other!r}")
    return bad


@pytest.mark.parametrize(
    "options", [{}, {"mp_fit": True, "n_random": 3}, {"traps": False}], ids=["default", "mp-n3", "no-traps"]
)
def test_torch_path_equals_the_numpy_path_column_by_column(options):
    model = _model()
    numpy_report = ww_callbacks.analyze(model, seed=0, eigensolver="numpy", **options)
    torch_report = ww_callbacks.analyze(model, seed=0, eigensolver="torch", **options)
    assert [lr.longname for lr in numpy_report.layers] == [lr.longname for lr in torch_report.layers]
    assert all(lr.status == "success" for lr in torch_report.layers)
    # every column, the randomized ones included: the torch path draws the numpy path's permutations
    assert _rows_close(numpy_report, torch_report, rel=1e-9) == []
    assert torch_report.options["eigensolver"] == "torch"


def test_auto_is_numpy_on_the_cpu_and_numpy_arrays_can_take_the_torch_path():
    model = _model()
    auto = ww_callbacks.analyze(model, seed=1)
    assert _rows_close(auto, ww_callbacks.analyze(model, seed=1, eigensolver="numpy"), rel=0.0) == []
    weights = {"fc.weight": np.random.default_rng(0).standard_t(3, size=(200, 120))}
    assert (
        _rows_close(
            ww_callbacks.analyze(weights, seed=2, eigensolver="numpy"),
            ww_callbacks.analyze(weights, seed=2, eigensolver="torch"),
            rel=1e-9,
        )
        == []
    )


def test_the_torch_shuffles_are_numpys_and_leave_the_global_rngs_alone():
    stack = np.random.default_rng(0).standard_normal((3, 40, 25))
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()[1].copy()
    from_torch = esd.shuffled_copies(torch.from_numpy(stack), np.random.default_rng(7), 2).numpy()
    from_numpy = esd.shuffled_copies(stack, np.random.default_rng(7), 2)
    np.testing.assert_array_equal(from_torch, from_numpy)
    assert torch.equal(torch.get_rng_state(), torch_state) and (np.random.get_state()[1] == numpy_state).all()


def test_statuses_of_broken_layers_are_the_same():
    weights = {
        "zero.weight": np.zeros((40, 30)),
        "nan.weight": np.full((40, 30), np.nan),
        "small.weight": np.ones((5, 4)),
        "rank1.weight": np.outer(np.arange(1.0, 41.0), np.arange(1.0, 31.0)),
    }
    numpy_report = ww_callbacks.analyze(weights, seed=0, eigensolver="numpy")
    torch_report = ww_callbacks.analyze(weights, seed=0, eigensolver="torch")
    statuses = [lr.status for lr in torch_report.layers]
    assert statuses == [lr.status for lr in numpy_report.layers]
    assert statuses[:3] == ["zero", "non-finite", "too-small"]
    rank1 = [lr for lr in torch_report.layers if lr.longname == "rank1"][0]
    assert rank1.matrix_rank == 1 and rank1.rank_loss == 29  # the SVD fallback of rank-deficient slices


def test_float32_is_an_opt_in_with_a_small_difference():
    model = _model()
    f64 = ww_callbacks.analyze(model, seed=0, eigensolver="torch")
    f32 = ww_callbacks.analyze(model, seed=0, eigensolver="torch", eigen_dtype="float32")
    assert f32.options["eigen_dtype"] == "float32"
    for a, b in zip(f64.layers, f32.layers, strict=True):
        assert b.alpha == pytest.approx(a.alpha, rel=1e-3)
        assert b.lambda_max == pytest.approx(a.lambda_max, rel=1e-5)
    assert _rows_close(f64, f32, rel=1e-9) != []  # it is not the float64 computation
    with pytest.raises(ValueError, match="torch eigensolver"):
        ww_callbacks.analyze(model, eigensolver="numpy", eigen_dtype="float32")
    with pytest.raises(ValueError, match="eigensolver must be"):
        ww_callbacks.analyze(model, eigensolver="cupy")


@pytest.mark.parametrize("background", [False, True], ids=["sync", "background"])
def test_the_engine_option_gives_the_same_history(background):
    model = _model()
    histories = {}
    for solver in ("numpy", "torch"):
        monitor = SpectralMonitor(seed=3, eigensolver=solver, background=background, per_layer=True)
        for epoch in range(2):
            if background:
                assert monitor.background.submit(model, epoch=epoch)
            else:
                monitor.run(model, epoch=epoch)
        if background:
            assert monitor.background.finish(timeout=120)
        histories[solver] = [
            {k: v for k, v in h.items() if k not in ("elapsed", "background_waits")} for h in monitor.history
        ]
    for a, b in zip(histories["numpy"], histories["torch"], strict=True):
        assert a.keys() == b.keys()
        for key, value in a.items():
            assert b[key] == pytest.approx(value, rel=1e-9), key
    with pytest.raises(ValueError, match="eigensolver must be"):
        SpectralMonitor(eigensolver="gpu")


def test_the_lightning_callback_takes_the_option(tmp_path):
    from _lightning_utils import make_model, make_trainer

    from ww_callbacks.lightning import WeightWatcherCallback

    values = {}
    for solver in ("numpy", "torch"):
        ww = WeightWatcherCallback(seed=0, eigensolver=solver, history_path=False, log_wandb=False)
        trainer = make_trainer("lightning.pytorch", tmp_path, max_epochs=2, callbacks=[ww])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # the same model and training in both fits
            trainer.fit(make_model("lightning.pytorch"))
        values[solver] = [(h["alpha"], h["rand_distance"]) for h in ww.history]
    assert np.allclose(values["numpy"], values["torch"], rtol=1e-9, atol=0)
