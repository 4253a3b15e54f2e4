"""Distributed analysis: layer shares, per-layer shuffles, FSDP2 (DTensor) weights, refused sharding schemes.

The multi-process tests run real ``torch.distributed`` (gloo, CPU) in subprocesses: a raw ``fully_shard`` loop
(`_fsdp2_script.py`) and Lightning's ``ModelParallelStrategy`` (`_fsdp2_lightning_script.py`).
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from ww_callbacks.distributed import assign_layers, layer_cost
from ww_callbacks.layers import snapshot
from ww_callbacks.spectral.layer import analyze_layers, analyze_with_generators, layer_rngs

HERE = os.path.dirname(__file__)

#: Columns that may differ between two runs of the same analysis.
NOT_COMPARED = {"elapsed"}


def _weights(*shapes: tuple[int, ...], seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"l{i}.weight": rng.standard_normal(shape) for i, shape in enumerate(shapes)}


def _assert_same_columns(got: list[dict], want: list[dict], rel: float = 1e-9) -> None:
    assert [row["longname"] for row in got] == [row["longname"] for row in want]
    for row, ref in zip(got, want, strict=True):
        assert set(row) == set(ref)
        for key, value in ref.items():
            if key in NOT_COMPARED:
                continue
            if isinstance(value, float):
                assert (math.isnan(value) and math.isnan(row[key])) or row[key] == pytest.approx(
                    value, rel=rel, abs=0.0
                ), (row["longname"], key)
            else:
                assert row[key] == value, (row["longname"], key)


def _free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def _run_script(script: str, *args: str) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_PORT", "MASTER_ADDR")
    }
    done = subprocess.run(
        [sys.executable, os.path.join(HERE, script), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-4000:]


# ------------------------------------------------------------------------------------------------ shares, RNG
def test_layer_cost_is_min_squared_times_max_summed_over_slices():
    conv = snapshot({"c.weight": np.ones((16, 8, 3, 3))})[0]  # 9 slices of 16 x 8
    dense = snapshot({"fc.weight": np.ones((30, 100))})[0]
    assert layer_cost(conv) == 9 * 8**2 * 16
    assert layer_cost(dense) == 30**2 * 100


def test_assign_layers_is_greedy_by_cost_deterministic_and_balanced():
    layers = snapshot(_weights((50, 50), (40, 40), (30, 30), (30, 30), (20, 20), (10, 10)))
    owners = assign_layers(layers, world_size=2)
    # costs 125k, 64k, 27k, 27k, 8k, 1k; largest first, each to the least loaded rank:
    # 125k -> 0; 64k -> 1 (64k); 27k -> 1 (91k); 27k -> 1 (118k); 8k -> 1 (126k); 1k -> 0 (126k)
    assert owners == [0, 1, 1, 1, 1, 0]
    assert owners == assign_layers(list(layers), world_size=2)
    loads = [sum(layer_cost(lw) for lw, o in zip(layers, owners, strict=True) if o == r) for r in (0, 1)]
    assert max(loads) / sum(loads) < 0.6
    assert assign_layers(layers, world_size=1) == [0] * 6
    assert sorted(set(assign_layers(layers, world_size=8))) == list(range(6))  # more ranks than layers


def test_a_layers_shuffles_do_not_depend_on_the_other_layers():
    layers = snapshot(_weights((60, 40), (50, 30), (70, 20)))
    full = analyze_layers(layers, rng=np.random.default_rng([7, 2]))
    # analyze only the last layer, with its own generator: the numbers of the whole run, exactly
    rngs = layer_rngs(np.random.default_rng([7, 2]), layers)
    alone = analyze_with_generators([layers[2]], [rngs[2]])[0]
    assert alone.rand_distance == full[2].rand_distance and alone.alpha == full[2].alpha
    # and a report of more layers leaves the first ones' shuffles alone
    more = analyze_layers(layers + snapshot(_weights((30, 30), seed=1)), rng=np.random.default_rng([7, 2]))
    assert [r.rand_distance for r in more[:3]] == [r.rand_distance for r in full]


# ------------------------------------------------------------------------------------------------ FSDP2
@pytest.mark.ddp
@pytest.mark.slow
def test_raw_fully_shard_analyze_on_both_ranks_equals_the_unsharded_report(tmp_path):
    pytest.importorskip("torch.distributed.fsdp")
    _run_script("_fsdp2_script.py", str(tmp_path), _free_port())
    zero, one = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    # really sharded: uneven local shards of fc1 (33 rows) and fc2 (7 rows)
    assert zero["local_shapes"] != one["local_shapes"]
    reference = zero["reference"]
    assert len(reference) == 9 and sum(row["status"] == "success" for row in reference) == 8
    for rank in (zero, one):
        _assert_same_columns(rank["sharded"], reference)  # deterministic and randomized columns alike
        _assert_same_columns(rank["unsharded_share"], reference)
        _assert_same_columns(rank["legacy"], zero["legacy_reference"])  # RandomState: weightwatcher's order
        # placeholders analyzed without the collective gather are refused, never analyzed as a shard
        refused = [reason for status, reason in rank["ungathered"] if status == "error"]
        assert len(refused) == 8 and all("not gathered" in reason for reason in refused)  # fc2: too small
    assert zero["sharded"] == one["sharded"] and zero["legacy"] == one["legacy"]
    # each rank analyzed its own share (the largest layer alone on rank 0), together every layer once
    share0, share1 = zero["shares"][0], one["shares"][0]
    assert (
        share0 == "rank 0 analyzes layers [8]" and share1 == "rank 1 analyzes layers [0, 1, 2, 3, 4, 5, 6, 7]"
    )


@pytest.mark.ddp
@pytest.mark.slow
def test_model_parallel_strategy_fsdp2_reports_the_unsharded_numbers_on_both_ranks(tmp_path):
    pytest.importorskip("lightning")
    _run_script("_fsdp2_lightning_script.py", str(tmp_path))
    zero, one = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert zero["sharded"] and one["sharded"]
    assert zero["history_epochs"] == one["history_epochs"] == [0, 1]
    assert zero["current_epoch"] == one["current_epoch"] == 2
    assert [row["status"] for row in zero["report"]] == ["success", "success", "too-small"]
    for rank in (zero, one):
        _assert_same_columns(rank["report"], zero["reference"])
    assert zero["report"] == one["report"] and zero["summary"] == one["summary"]


def test_fsdp1_and_zero3_strategies_are_refused_by_name():
    pytest.importorskip("lightning")
    from lightning.pytorch.strategies import FSDPStrategy

    from ww_callbacks._lightning_base import _refuse_unsupported_strategy

    with pytest.raises(ValueError, match="FSDPStrategy"):
        _refuse_unsupported_strategy(FSDPStrategy())
