"""Stopping rules written as text (``--rule``), parsed without running any code, and replayed on a history.

The rule syntax is one Python-like call expression built only from the rule classes of `ww_callbacks.stopping`
and literal arguments::

    RULE    := NAME "(" [ARG ("," ARG)*] ")"
    NAME    := Plateau | AlphaBelow | AnyOf | AllOf
    ARG     := LITERAL | NAME=LITERAL | RULE          (rules only inside AnyOf/AllOf)
    LITERAL := a number, a string, True/False/None, or a tuple/list of those

for example ``Plateau('rand_distance', mode='max', patience=3)`` or
``AnyOf(AlphaBelow(2.0), Plateau('alpha', patience=5, min_delta=0.01))``. The text is parsed with `ast` and
every argument is read with `ast.literal_eval`; anything else (attribute access, other names, operators,
comprehensions, ``**kwargs``) is refused with a `ValueError`. Nothing is ever passed to ``eval``.

Example:
    >>> parse_rule("Plateau('rand_distance', mode='max', patience=3)")
    Plateau('rand_distance', mode='max', patience=3, min_delta=0, start_from_epoch=0)
    >>> parse_rule("__import__('os').system('true')")
    Traceback (most recent call last):
    ...
    ValueError: rule: only calls of AllOf, AlphaBelow, AnyOf, Plateau are allowed, not __import__('os').system
"""

from __future__ import annotations

import ast
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..spectral.catalog import SUMMARY_METRICS
from ..spectral.report import LayerResult, SpectralReport
from ..stopping import AllOf, AlphaBelow, AnyOf, Plateau, StopDecision, StoppingRule

__all__ = ["RULES", "RuleReplay", "monitored_metrics", "parse_rule", "replay_rule", "reports_from_history"]

#: The rule classes the syntax knows, by name.
RULES: Mapping[str, type[StoppingRule]] = {cls.__name__: cls for cls in (AllOf, AlphaBelow, AnyOf, Plateau)}
_COMBINERS = (AnyOf, AllOf)


def _build(node: ast.AST) -> StoppingRule:
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name) or node.func.id not in RULES:
        what = ast.unparse(node.func if isinstance(node, ast.Call) else node)
        raise ValueError(f"rule: only calls of {', '.join(sorted(RULES))} are allowed, not {what}")
    cls = RULES[node.func.id]
    args: list[Any] = []
    for arg in node.args:
        if isinstance(arg, ast.Starred):
            raise ValueError(f"rule: *arguments are not allowed in {node.func.id}(...)")
        if isinstance(arg, ast.Call) and issubclass(cls, _COMBINERS):
            args.append(_build(arg))
        else:
            args.append(_literal(arg, node.func.id))
    kwargs: dict[str, Any] = {}
    for keyword in node.keywords:
        if keyword.arg is None:
            raise ValueError(f"rule: **arguments are not allowed in {node.func.id}(...)")
        kwargs[keyword.arg] = _literal(keyword.value, node.func.id)
    try:
        return cls(*args, **kwargs)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"rule: {ast.unparse(node)}: {exc}") from exc


def _literal(node: ast.AST, owner: str) -> Any:
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise ValueError(
            f"rule: arguments of {owner}(...) must be literals (numbers, strings, True/False/None), "
            f"not {ast.unparse(node)}"
        ) from None


def parse_rule(text: str) -> StoppingRule:
    """Parse a rule written in the syntax above into a fresh `StoppingRule`; `ValueError` for anything else.

    Example:
        >>> rule = parse_rule("AnyOf(AlphaBelow(2.0), Plateau('alpha', patience=2))")
        >>> [r.name for r in rule.rules]
        ['AlphaBelow', 'Plateau']
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError("rule: empty; write e.g. Plateau('rand_distance', mode='max', patience=3)")
    if len(text) > 2000:
        raise ValueError("rule: longer than 2000 characters")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"rule: not a valid rule expression ({exc.msg}): {text.strip()}") from None
    return _build(tree.body)


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def reports_from_history(rows: Sequence[Mapping[str, Any]]) -> list[tuple[int, int, SpectralReport, str]]:
    """One (epoch, step, `SpectralReport`, checkpoint) per analyzed epoch, in epoch order, from per-layer rows
    (`ww_callbacks.load_history`, de-duplicated). The options the summaries depend on (``randomize``,
    ``mp_fit``) are read off the rows: a metric counts as computed when any layer has a finite value of it.

    Example:
        >>> rows = [{"epoch": 0, "step": 5, "layer": "fc", "layer_id": 1, "name": "fc", "longname": "fc",
        ...          "layer_type": "dense", "N": 9, "M": 4, "status": "success", "alpha": 3.0}]
        >>> [(e, s, r.summary["alpha"]) for e, s, r, _ in reports_from_history(rows)]
        [(0, 5, 3.0)]
    """
    by_epoch: dict[int, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_epoch.setdefault(int(row["epoch"]), []).append(row)
    options = {
        "randomize": any(math.isfinite(_float(r.get("rand_distance"))) for r in rows),
        "mp_fit": any(math.isfinite(_float(r.get("mp_softrank"))) for r in rows),
    }
    out = []
    for epoch in sorted(by_epoch):
        group = by_epoch[epoch]
        layers = [LayerResult.from_dict(row) for row in group]
        step = max(int(row.get("step", 0)) for row in group)
        checkpoint = str(group[0].get("checkpoint", ""))
        out.append((epoch, step, SpectralReport(layers=layers, options=dict(options)), checkpoint))
    return out


@dataclass(frozen=True)
class RuleReplay:
    """Where a rule would have stopped: the first analyzed epoch whose decision was "stop" (None: never).

    Example:
        >>> RuleReplay("Plateau(...)", None, None, "", "", 0).stopped
        False
    """

    rule: str
    epoch: int | None
    step: int | None
    checkpoint: str
    reason: str
    num_epochs: int

    @property
    def stopped(self) -> bool:
        return self.epoch is not None

    def describe(self) -> str:
        """One line for the command line."""
        if self.epoch is None:
            return f"{self.rule} would not have stopped training in the {self.num_epochs} analyzed epochs"
        where = f" ({self.checkpoint})" if self.checkpoint else ""
        return f"{self.rule} would have stopped at epoch {self.epoch}, step {self.step}{where}: {self.reason}"


def replay_rule(rule: StoppingRule, rows: Sequence[Mapping[str, Any]]) -> RuleReplay:
    """Feed a fresh ``rule`` the history's analyses epoch by epoch, as the callbacks would have, and say where
    it would have stopped. A rule that needs a metric the history lacks raises `ValueError`.

    Example:
        >>> rows = [{"epoch": e, "step": e, "layer": "fc", "layer_id": 1, "name": "fc", "longname": "fc",
        ...          "layer_type": "dense", "N": 9, "M": 4, "status": "success", "alpha": a}
        ...         for e, a in enumerate([3.0, 2.5, 1.9, 1.8])]
        >>> replay_rule(AlphaBelow(2.0), rows).epoch
        2
    """
    rule.reset()
    epochs = reports_from_history(rows)
    for epoch, step, report, checkpoint in epochs:
        missing = [m for m in monitored_metrics(rule) if m not in report.summary]
        if missing:
            raise ValueError(
                f"rule {rule!r} monitors {missing[0]!r}, which the history does not have "
                f"(the sweep ran without the option it needs)"
            )
        decision: StopDecision = rule.update(report, epoch=epoch)
        if decision.stop:
            return RuleReplay(repr(rule), epoch, step, checkpoint, decision.reason, len(epochs))
    return RuleReplay(repr(rule), None, None, "", "", len(epochs))


def monitored_metrics(rule: StoppingRule) -> list[str]:
    """The summary metrics ``rule`` (and the rules it combines) watch.

    Example:
        >>> monitored_metrics(parse_rule("AnyOf(AlphaBelow(), Plateau('rand_distance', mode='max'))"))
        ['alpha', 'rand_distance']
    """
    children = getattr(rule, "rules", None)
    if children:
        return [m for child in children for m in monitored_metrics(child)]
    return [rule.monitor] if rule.monitor in SUMMARY_METRICS else []
