"""Real 2-process run of the Hugging Face Trainer (CPU, gloo) for tests/test_transformers_callback.py.

Started by ``python -m torch.distributed.run --nproc_per_node=2 tests/_hf_ddp_script.py OUT_DIR``. The rule fires
on rank 1 only (at its third analysis), so both processes stop at the same step only if the decision is reduced.
Every process writes OUT_DIR/rank<r>.json with what it logged and decided. With a second argument
``background`` each process analyzes its share of the layers in its worker thread.
"""

from __future__ import annotations

import json
import logging
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [_HERE, os.path.dirname(_HERE)]  # the test helpers and the package (when not installed)

from _hf_trainer_utils import TokenData, tiny_gpt2, training_args  # noqa: E402
from transformers import Trainer  # noqa: E402

from ww_callbacks.stopping import StopDecision, StoppingRule  # noqa: E402
from ww_callbacks.transformers import WeightWatcherCallback  # noqa: E402

EVERY = 2
FIRES_AT_ANALYSIS = 3  # on rank 1 only: step 6


class FireOnRankOne(StoppingRule):
    """Says stop at its third report, on rank 1 only."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = 0

    def check(self, report, *, epoch):
        self.seen += 1
        fire = int(os.environ["RANK"]) == 1 and self.seen >= FIRES_AT_ANALYSIS
        return StopDecision(fire, f"rank 1 says stop at report {self.seen}" if fire else "go on")


def main(out: str, background: bool = False) -> None:
    # seed=None on purpose: each process draws its own, process 0's must win
    shares: list[str] = []  # the "rank r analyzes layers [...]" lines of the shared analysis

    class _Shares(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            shares.append(record.getMessage())

    logging.getLogger("ww_callbacks.distributed").addHandler(_Shares())
    logging.getLogger("ww_callbacks.distributed").setLevel(logging.DEBUG)
    ww = WeightWatcherCallback(every_n_steps=EVERY, early_stopping=FireOnRankOne(), background=background)
    args = training_args(out, max_steps=20, ddp_backend="gloo", ddp_find_unused_parameters=False)
    trainer = Trainer(model=tiny_gpt2(), args=args, train_dataset=TokenData(n=320), callbacks=[ww])
    trainer.train()
    ww_logs = [entry for entry in trainer.state.log_history if "ww/alpha" in entry]
    result = {
        "rank": int(os.environ["RANK"]),
        "world_size": args.world_size,
        "global_step": trainer.state.global_step,
        "stopped_step": ww.stopped_step,
        "stop_reason": ww.stop_reason,
        "history": ww.history,
        "ww_logs": ww_logs,
        "seed": ww.seed,
        "analysis_time": ww.engine.analysis_time,
        "shares": shares,
        "submitted": 0 if ww.engine.background is None else ww.engine.background.submitted,
    }
    with open(os.path.join(out, f"rank{result['rank']}.json"), "w") as f:
        json.dump(result, f)
    # Leave without tearing torch down: a gloo worker thread that drops a finished collective's tensors after the
    # script ends needs the GIL, which the main thread holds while destroying the process group (a deadlock in
    # destroy_process_group or the DDP reducer's destructor) or while the interpreter exits (an abort, "terminate
    # called without an active exception"; pytorch#190489). Seen here in about one background run in four (the
    # last collective, the callback's merge at train end, comes just before exit); everything this test checks
    # is in the file written above.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1], background=sys.argv[2:] == ["background"])
