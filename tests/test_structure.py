"""The package's shape: dependencies point down, small functions and classes, one home for each fact, and the
callbacks' public signatures in step with the options they share.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
from pathlib import Path

import numpy as np
import pytest

import ww_callbacks
from ww_callbacks.engine import DEFAULT_METRICS, WatchOptions
from ww_callbacks.engine.options import POSITIONAL_OPTIONS
from ww_callbacks.spectral.catalog import METRICS, SUMMARY_COUNTS, SUMMARY_METRICS

PACKAGE = Path(ww_callbacks.__file__).parent

#: Each callback module and the options only it has (everything else is a `WatchOptions` field).
CALLBACKS = [
    pytest.param("ww_callbacks.lightning", {"every_n_train_steps", "run_on"}, id="lightning"),
    pytest.param("ww_callbacks.pytorch_lightning", {"every_n_train_steps", "run_on"}, id="pytorch_lightning"),
    pytest.param(
        "ww_callbacks.keras", {"every_n_batches", "restore_best_weights"}, id="keras", marks=pytest.mark.keras
    ),
    pytest.param("ww_callbacks.transformers", {"every_n_steps"}, id="transformers"),
]


def _modules(root: Path) -> list[Path]:
    return sorted(root.rglob("*.py"))


def test_spectral_core_imports_nothing_outside_itself():
    for path in _modules(PACKAGE / "spectral"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                assert node.level <= 1, f"{path.name}:{node.lineno} imports from outside spectral/"
                assert node.level == 1 or not (node.module or "").startswith("ww_callbacks"), path.name
            elif isinstance(node, ast.Import):
                assert not any(a.name.startswith("ww_callbacks") for a in node.names), path.name


def test_functions_and_classes_stay_small():
    too_long = []
    for path in _modules(PACKAGE):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            limit = {ast.FunctionDef: 80, ast.AsyncFunctionDef: 80, ast.ClassDef: 300}.get(type(node))
            if limit is not None and node.end_lineno - node.lineno + 1 > limit:
                too_long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name}")
    assert not too_long


@pytest.mark.parametrize(("module", "own_options"), CALLBACKS)
def test_callback_signature_follows_the_shared_options(module, own_options):
    callback = importlib.import_module(module).WeightWatcherCallback
    params = list(inspect.signature(callback.__init__).parameters.values())[1:]  # without self
    shared = [p for p in params if p.name not in own_options]
    fields = dataclasses.fields(WatchOptions)
    # Same names in the same order, same defaults, positional exactly where POSITIONAL_OPTIONS says.
    assert [p.name for p in shared] == [f.name for f in fields]
    assert [p.default for p in shared] == [f.default for f in fields]
    positional = [p.name for p in params if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    assert tuple(positional) == POSITIONAL_OPTIONS
    assert {p.name for p in params} - {f.name for f in fields} == own_options
    # Each option is documented in the callback's own docstring.
    doc = inspect.getdoc(callback) or ""
    undocumented = [p.name for p in params if p.name not in doc]
    assert not undocumented


def test_the_shared_options_are_declared_once():
    """WatchKwargs (what IDEs and type checkers see for ``**options``) is WatchOptions as keyword arguments, and
    every callback's full signature is built from the fields, not written out."""
    import typing

    from ww_callbacks.engine.signature import WatchKwargs

    fields = dataclasses.fields(WatchOptions)
    hints = typing.get_type_hints(WatchKwargs)
    assert list(hints) == [f.name for f in fields]
    assert [str(hints[f.name]) for f in fields] == [
        str(typing.get_type_hints(WatchOptions)[f.name]) for f in fields
    ]
    for module, _ in [p.values for p in CALLBACKS if "keras" not in p.values[0]]:
        init = importlib.import_module(module).WeightWatcherCallback.__init__
        assert [p.name for p in init.__signature__.parameters.values()][-1] == fields[-1].name
        source = inspect.getsource(init)
        assert not any(f"    {f.name}:" in source for f in fields), f"{module} spells out shared options"


@pytest.mark.parametrize(("module", "own_options"), CALLBACKS[:2])
def test_lightning_callbacks_are_class_statements(module, own_options):
    mod = importlib.import_module(module)
    callback = mod.WeightWatcherCallback
    assert inspect.getsourcefile(callback) == mod.__file__
    assert inspect.getsource(callback).startswith(
        "class WeightWatcherCallback(Callback, LightningWatcherMixin):"
    )
    # Every hook it implements is a real override of the namespace's Callback.
    hooks = ("setup", "on_fit_start", "on_fit_end", "on_exception", "on_train_batch_end")
    for hook in (*hooks, "state_dict", "load_state_dict"):
        assert getattr(callback.__dict__[hook], "__override__", False), hook
    instance = callback(seed=0)
    assert instance.monitor is instance.engine  # the engine's former name still works


def test_metric_facts_come_from_the_one_table():
    from ww_callbacks import plots
    from ww_callbacks.cli import HISTORY_METRICS
    from ww_callbacks.sinks import wandb as wandb_sink
    from ww_callbacks.spectral import layer

    assert SUMMARY_METRICS + SUMMARY_COUNTS == tuple(METRICS)
    assert SUMMARY_METRICS == ww_callbacks.SUMMARY_METRICS
    assert SUMMARY_COUNTS == tuple(n for n, i in METRICS.items() if i.count) == ("num_nonfinite_layers",)
    assert DEFAULT_METRICS == tuple(n for n, i in METRICS.items() if i.default)
    # plots draw means over layers; counts (diverged layers) are logged but not plotted by default
    assert plots.DEFAULT_HISTORY_METRICS == tuple(n for n, i in METRICS.items() if i.default and not i.count)
    assert HISTORY_METRICS == tuple(n for n, i in METRICS.items() if i.history_table)
    assert wandb_sink._SUMMARY_GOALS == {n: i.better for n, i in METRICS.items() if i.better}
    assert plots.ALPHA_BAND == METRICS["alpha"].healthy == (layer.OVER_TRAINED, layer.UNDER_TRAINED)
    needs = {n: i.needs for n, i in METRICS.items() if i.needs}
    assert needs == {"rand_distance": "randomize", "mp_softrank": "mp_fit"}
    # ... and the report's summary, the options' checks and the rules follow it.
    for metric, option in needs.items():
        report = ww_callbacks.analyze({"fc.weight": np.eye(20)}, **{option: False})
        assert metric not in report.summary
        with pytest.raises(ValueError, match=f"{option}=True"):
            WatchOptions(metrics=(metric,), **{option: False})


def test_version_has_one_source():
    pyproject = (PACKAGE.parent / "pyproject.toml").read_text(encoding="utf-8")
    assert 'dynamic = ["version"]' in pyproject and 'attr = "ww_callbacks.__version__"' in pyproject
    assert "\nversion =" not in pyproject.split("[project]")[1].split("[")[0]
