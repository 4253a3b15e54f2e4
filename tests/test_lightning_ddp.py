"""`WeightWatcherCallback` under real 2-process DDP on CPU (gloo): same values, same stop, no deadlock."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("lightning")

SCRIPT = os.path.join(os.path.dirname(__file__), "_ddp_script.py")


@pytest.mark.ddp
@pytest.mark.slow
def test_two_process_ddp_logs_identical_values_and_stops_together(tmp_path):
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_PORT")
    }
    done = subprocess.run(
        [sys.executable, SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=420, env=env
    )
    assert done.returncode == 0, done.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    zero, one = ranks
    assert [r["rank"] for r in ranks] == [0, 1] and zero["world_size"] == 2

    # both ranks stop at the first over-trained epoch (3), for the same reason
    assert zero["stopped_epoch"] == one["stopped_epoch"] == 3
    assert zero["current_epoch"] == one["current_epoch"] == 4
    assert zero["stop_reason"] == one["stop_reason"] and "below 2" in zero["stop_reason"]

    # every rank logged the very same values every epoch, including the randomized rand_distance
    assert zero["seen"] == one["seen"]
    assert set(zero["seen"]) == {"0", "1", "2", "3"}
    assert {"ww/alpha", "ww/fc1/alpha", "ww2/rand_distance"} <= set(zero["seen"]["3"])
    assert zero["history"] == one["history"] and zero["last_summary"] == one["last_summary"]
    assert zero["seeds"] == one["seeds"]

    # shard_layers=True: each rank analyzed one layer (fc1, the costlier, on rank 0), every epoch; with
    # shard_layers=False rank 0 analyzed both; per analysis, the stopper's line comes before ww2's
    assert zero["shares"] == ["rank 0 analyzes layers [0]", "rank 0 analyzes layers [0, 1]"] * 4
    assert one["shares"] == ["rank 1 analyzes layers [1]", "rank 1 analyzes layers []"] * 4
    assert zero["analysis_time"] > 0 and one["analysis_time"] > 0
    # the merged report is the single-process one, exactly (randomized columns included)
    for rank in ranks:
        assert rank["last_report"] == rank["reference"] and len(rank["reference"]) == 2

    # history file written once (rank 0): one line per layer per analyzed epoch
    lines = (tmp_path / "history.jsonl").read_text().splitlines()
    assert [(json.loads(x)["epoch"], json.loads(x)["layer"]) for x in lines] == [
        (e, layer) for e in range(4) for layer in ("fc1", "fc2")
    ]


@pytest.mark.ddp
@pytest.mark.slow
def test_background_under_ddp_shares_the_layers_and_stops_every_rank_together(tmp_path):
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_PORT")
    }
    done = subprocess.run(
        [sys.executable, SCRIPT, str(tmp_path), "background"],
        capture_output=True,
        text=True,
        timeout=420,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    zero, one = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    # the decision of epoch 3 takes effect when its shares are merged: at epoch 3's end if both workers were done
    # by then, else at epoch 4's; on every rank at the same epoch either way
    epochs = zero["current_epoch"]
    assert one["current_epoch"] == epochs in (4, 5)
    assert zero["stopped_epoch"] == one["stopped_epoch"] == 3
    # each rank's worker analyzed its own share (not rank 0 alone), every epoch trained
    assert zero["submitted"] == one["submitted"] == epochs
    # (the second callback, shard_layers=False and synchronous, has rank 0 analyze both layers)
    assert [line for line in zero["shares"] if not line.endswith("[0, 1]")] == [
        "rank 0 analyzes layers [0]"
    ] * epochs
    assert [line for line in one["shares"] if not line.endswith("[]")] == [
        "rank 1 analyzes layers [1]"
    ] * epochs
    # merged on every rank: the same history, the same report as one process
    assert zero["history"] == one["history"] and [h["epoch"] for h in zero["history"]] == list(range(epochs))
    for rank in (zero, one):
        assert rank["last_report"] == rank["reference"]
    assert zero["seen"] == one["seen"]
