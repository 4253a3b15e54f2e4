"""Raw FSDP2 (``fully_shard``) on 2 CPU processes (gloo) for tests/test_distributed.py: ``analyze`` on every rank.

Usage: python tests/_fsdp2_script.py OUT_DIR PORT. Each rank builds the same model (same seed), analyzes an
unsharded copy on its own (the reference), shards every layer with ``fully_shard`` and analyzes the sharded model
collectively, and writes OUT_DIR/rank<r>.json.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [_HERE, os.path.dirname(_HERE)]  # the test helpers and the package (when not installed)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch import nn  # noqa: E402

import ww_callbacks  # noqa: E402
from ww_callbacks.layers import snapshot  # noqa: E402
from ww_callbacks.spectral.layer import analyze_layers  # noqa: E402


class Net(nn.Module):
    """Layers of every kind, uneven shard sizes (7 and 33 rows over 2 ranks) and an attention input projection."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(100, 32)
        self.attn = nn.MultiheadAttention(32, 4)
        self.conv = nn.Conv2d(8, 16, 3)
        self.fc1 = nn.Linear(64, 33)
        self.fc2 = nn.Linear(33, 7)
        self.big = nn.Linear(120, 90)


def columns(report: ww_callbacks.SpectralReport) -> list[dict]:
    return [layer.to_dict() for layer in report.layers]


class _Shares(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def run(rank: int, out: str, port: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.manual_seed(0)
    model = Net()
    plain = copy.deepcopy(model)
    mesh = init_device_mesh("cpu", (2,))
    for module in (model.embed, model.attn, model.conv, model.fc1, model.fc2, model.big):
        fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)
    shares = _Shares()
    logging.getLogger("ww_callbacks.distributed").addHandler(shares)
    logging.getLogger("ww_callbacks.distributed").setLevel(logging.DEBUG)
    result = {
        "rank": rank,
        "local_shapes": [list(p.to_local().shape) for p in model.parameters()],
        "reference": columns(ww_callbacks.analyze(plain, seed=0)),
        "sharded": columns(ww_callbacks.analyze(model, seed=0)),
        "unsharded_share": columns(ww_callbacks.analyze(model, seed=0, shard_layers=False)),
        "legacy_reference": columns(ww_callbacks.analyze(plain, rng=np.random.RandomState(42), traps=True)),
        "legacy": columns(ww_callbacks.analyze(model, rng=np.random.RandomState(42), traps=True)),
        # the placeholders of a sharded snapshot, analyzed without gathering: refused, never read as shards
        "ungathered": [
            (r.status, r.reason) for r in analyze_layers(snapshot(model), rng=np.random.default_rng(0))
        ],
        "shares": shares.lines,
    }
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    torch.multiprocessing.spawn(run, args=(sys.argv[1], sys.argv[2]), nprocs=2)
