"""Real 2-process DDP run (CPU, gloo) for tests/test_lightning_ddp.py.

Lightning starts the second process by running this script again, so the training lives here, not in the test.
Usage: python tests/_ddp_script.py OUT_DIR [background]. Every rank writes OUT_DIR/rank<r>.json with what it logged
and decided. With ``background`` the first callback analyzes in each rank's worker thread (sharing the layers).
"""

from __future__ import annotations

import json
import logging
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [_HERE, os.path.dirname(_HERE)]  # the test helpers and the package (when not installed)

from _lightning_utils import make_model, make_trainer  # noqa: E402

from ww_callbacks.engine import SpectralMonitor  # noqa: E402
from ww_callbacks.lightning import WeightWatcherCallback  # noqa: E402
from ww_callbacks.stopping import AlphaBelow  # noqa: E402

SCHEDULE = [5.0, 4.0, 3.0, 1.6, 1.5]  # over-trained from epoch 3 on


class _Shares(logging.Handler):
    """Collects the "rank r analyzes layers [...]" lines of the shared analysis."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def main(out: str, background: bool = False) -> None:
    shares = _Shares()
    logging.getLogger("ww_callbacks.distributed").addHandler(shares)
    logging.getLogger("ww_callbacks.distributed").setLevel(logging.DEBUG)
    stopper = WeightWatcherCallback(
        per_layer=True,
        early_stopping=AlphaBelow(2.0),
        history_path=os.path.join(out, "history.jsonl"),
        background=background,
    )
    # seed=None on purpose: each process draws its own, rank 0's must win
    # rank 0 analyzes every layer for this one; the other shares the layers (shard_layers=True, the default)
    second = WeightWatcherCallback(
        prefix="ww2/", metrics=("rand_distance",), history_path=False, shard_layers=False
    )
    model = make_model(alpha_schedule=SCHEDULE)
    trainer = make_trainer(
        "lightning.pytorch", out, strategy="ddp", devices=2, max_epochs=8, callbacks=[stopper, second]
    )
    trainer.fit(model)
    # one process, the same weights (those of the last analysis), seed and epoch: what the merged report must be
    reference = SpectralMonitor(seed=stopper.seed).analyze(model, epoch=stopper.history[-1]["epoch"])
    result = {
        "rank": trainer.global_rank,
        "world_size": trainer.world_size,
        "current_epoch": trainer.current_epoch,
        "stopped_epoch": stopper.stopped_epoch,
        "stop_reason": stopper.stop_reason,
        "history": stopper.history,
        "seen": {str(k): v for k, v in model.seen.items()},
        "analysis_time": stopper.engine.analysis_time + second.engine.analysis_time,
        "seeds": [stopper.seed, second.seed],
        "last_summary": stopper.last_report.summary if stopper.last_report is not None else None,
        "last_report": [layer.to_dict() for layer in stopper.last_report.layers],
        "reference": [layer.to_dict() for layer in reference.layers],
        "shares": shares.lines,
        "submitted": 0 if stopper.engine.background is None else stopper.engine.background.submitted,
    }
    with open(os.path.join(out, f"rank{trainer.global_rank}.json"), "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1], background=sys.argv[2:] == ["background"])
