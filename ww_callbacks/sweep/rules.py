"""Stopping rules written as text (``--rule``), parsed without running any code, and replayed on a history.

The rule syntax is one Python-like call expression built only from the rule classes of `ww_callbacks.stopping`
and literal arguments::

    RULE    := NAME "(" [ARG ("," ARG)*] ")"
    NAME    := a rule class of ww_callbacks.stopping (Plateau, AlphaBelow, NonFinite, Slowdown, LayersPlateau,
               TrapsAppear, AnyOf, AllOf)
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
    ValueError: rule: only calls of AllOf, AlphaBelow, AnyOf, LayersPlateau, NonFinite, Plateau, Slowdown, TrapsAppear are allowed, not __import__('os').system
"""

from __future__ import annotations

import ast
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .. import stopping
from ..spectral.catalog import METRICS
from ..stopping import StoppingRule, history_reports, replay

__all__ = ["RULES", "RuleReplay", "monitored_metrics", "parse_rule", "replay_rule"]

#: The rule classes the syntax knows, by name: every rule `ww_callbacks.stopping` exports.
RULES: Mapping[str, type[StoppingRule]] = {
    name: obj
    for name in stopping.__all__
    if isinstance(obj := getattr(stopping, name), type)
    and issubclass(obj, StoppingRule)
    and obj is not StoppingRule
}
_COMBINERS = (stopping.AnyOf, stopping.AllOf)


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
    """Feed a fresh ``rule`` the history's analyses in order, as the callbacks would have, and say where it
    would have stopped (`ww_callbacks.stopping.replay`, plus the checkpoint of that analysis). A rule that
    needs a metric the history lacks raises `ValueError`.

    Example:
        >>> rows = [{"epoch": e, "step": e, "layer": "fc", "layer_id": 1, "name": "fc", "longname": "fc",
        ...          "layer_type": "dense", "N": 9, "M": 4, "status": "success", "alpha": a}
        ...         for e, a in enumerate([3.0, 2.5, 1.9, 1.8])]
        >>> from ww_callbacks.stopping import AlphaBelow
        >>> replay_rule(AlphaBelow(2.0), rows).epoch
        2
    """
    reports = history_reports(rows)
    for _, report in reports[:1]:
        missing = [m for m in monitored_metrics(rule) if m not in report.summary]
        if missing:
            raise ValueError(
                f"rule {rule!r} monitors {missing[0]!r}, which the history does not have "
                f"(the sweep ran without the option it needs)"
            )
    result = replay(rule, reports)
    if not result.stopped or result.decision is None:
        return RuleReplay(repr(rule), None, None, "", "", len(reports))
    step = result.stop_step
    checkpoint = next(
        (
            str(row.get("checkpoint", ""))
            for row in rows
            if int(row["epoch"]) == result.stop_epoch and (step is None or int(row.get("step") or 0) == step)
        ),
        "",
    )
    return RuleReplay(repr(rule), result.stop_epoch, step, checkpoint, result.decision.reason, len(reports))


def monitored_metrics(rule: StoppingRule) -> list[str]:
    """The summary metrics ``rule`` (and the rules it combines) watch.

    Example:
        >>> monitored_metrics(parse_rule("AnyOf(AlphaBelow(), Plateau('rand_distance', mode='max'))"))
        ['alpha', 'rand_distance']
    """
    children = getattr(rule, "rules", None)
    if children:
        return [m for child in children for m in monitored_metrics(child)]
    return [rule.monitor] if rule.monitor is not None and rule.monitor in METRICS else []
