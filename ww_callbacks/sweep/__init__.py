"""After the fact: analyze a series of saved checkpoints into the history the callbacks write.

``ww-callbacks sweep CHECKPOINTS... --history ww_history.jsonl`` (or `run_sweep`) analyzes Lightning ``.ckpt``
files, Hugging Face ``checkpoint-*`` directories, ``.keras`` files and plain state dicts, each with its epoch and
step (`ww_callbacks.sweep.checkpoints`), in parallel processes or on a Dask cluster
(`ww_callbacks.sweep.runner`), and appends one line per layer per checkpoint to a JSON-lines history, so that
`ww_callbacks.load_history`, the plots and the stopping rules work on it as on a callback's history; a rule given
as text (`ww_callbacks.sweep.rules`) is replayed to say where it would have stopped.

Example:
    >>> import numpy as np, os, tempfile
    >>> from safetensors.numpy import save_file
    >>> d = tempfile.mkdtemp()
    >>> for e in range(3):
    ...     w = np.random.default_rng(e).standard_normal((60, 30)).astype(np.float32)
    ...     save_file({"fc.weight": w}, os.path.join(d, f"epoch={e}.safetensors"))
    >>> result = run_sweep([d], os.path.join(d, "h.jsonl"), jobs=1)
    >>> rows = load_history(result.history, as_pandas=False)
    >>> sorted({r["epoch"] for r in rows})
    [0, 1, 2]
    >>> replay_rule(parse_rule("Plateau('alpha', patience=5)"), rows).stopped
    False
"""

from __future__ import annotations

from ..history import load_history
from .checkpoints import Checkpoint, find_checkpoints, read_checkpoint
from .rules import RuleReplay, parse_rule, replay_rule
from .runner import CheckpointOutcome, SweepResult, analyze_checkpoint, run_sweep

__all__ = [
    "Checkpoint",
    "CheckpointOutcome",
    "RuleReplay",
    "SweepResult",
    "analyze_checkpoint",
    "find_checkpoints",
    "load_history",
    "parse_rule",
    "read_checkpoint",
    "replay_rule",
    "run_sweep",
]
