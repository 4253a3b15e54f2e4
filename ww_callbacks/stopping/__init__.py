"""Data-free early-stopping rules: pure, framework-free logic shared by every callback.

A rule sees one `SpectralReport` per analyzed epoch (through `StoppingRule.update`) and answers with a
`StopDecision`: stop or go, and a human-readable reason. Rules keep their own state (best score, wait count ...)
and expose it through ``state_dict()`` / ``load_state_dict()`` so a resumed run continues where it stopped.

- ``base``: the protocol (`StoppingRule`, `StopDecision`) and what rules share (`improves`);
- ``rules``: `AlphaBelow`, `Plateau`, `NonFinite`, `Slowdown`, `LayersPlateau`, `TrapsAppear`;
- ``combine``: `AnyOf`, `AllOf`;
- ``replay``: `replay` a rule on a recorded history, `recommended`.

Example:
    >>> import numpy as np, ww_callbacks
    >>> from ww_callbacks.stopping import AlphaBelow, AnyOf, Plateau
    >>> rule = AnyOf(AlphaBelow(2.0), Plateau("rand_distance", mode="max", patience=3))
    >>> w = np.random.default_rng(0).standard_normal((200, 100))
    >>> decision = rule.update(ww_callbacks.analyze({"fc.weight": w}, seed=0), epoch=0)
    >>> decision.stop
    False
"""

from .base import StopDecision, StoppingRule, improves
from .combine import AllOf, AnyOf
from .replay import Replay, history_reports, recommended, replay
from .rules import AlphaBelow, LayersPlateau, NonFinite, Plateau, Slowdown, TrapsAppear

__all__ = [
    "AllOf",
    "AlphaBelow",
    "AnyOf",
    "LayersPlateau",
    "NonFinite",
    "Plateau",
    "Replay",
    "Slowdown",
    "StopDecision",
    "StoppingRule",
    "TrapsAppear",
    "history_reports",
    "improves",
    "recommended",
    "replay",
]
