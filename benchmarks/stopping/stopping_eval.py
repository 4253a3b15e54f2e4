"""Replay stopping rules on the recorded runs, tune them on one half of the suite, report them on the other.

For a run with budget E epochs (0-based epochs 0 .. E-1) and a rule that says stop after epoch s (or never),
the rule has trained ``s + 1`` epochs (E if it never fired) and keeps the weights of epoch c: the stop epoch
(or the last one), or with "restore" the epoch its `restore_epoch` names (what ``restore_best_weights`` would
restore; for a rule that never fires, chosen over the whole run). Then

* gap   = best validation accuracy of the run (any epoch) - validation accuracy of epoch c;
* saved = (E - epochs trained) / E.

Each rule family's options (threshold, patience, window, restore or not) are chosen on the runs of the tuning
half (`stopping_suite.RunSpec.split`) by `selection_key`, and reported on the held-out half. The baselines use
the validation data (EarlyStopping on val_loss) or nothing (a fixed budget, never stopping).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from stopping_suite import Run

from ww_callbacks.stopping import (
    AllOf,
    AlphaBelow,
    AnyOf,
    LayersPlateau,
    NonFinite,
    Plateau,
    Slowdown,
    StoppingRule,
    TrapsAppear,
    recommended,
    replay,
)

#: The target of issue 14 for `ww_callbacks.stopping.recommended()` on the held-out half.
TARGET_MEAN_GAP, TARGET_WORST_GAP, TARGET_SAVED = 0.02, 0.05, 0.25


# ------------------------------------------------------------------------------------------------ outcomes


@dataclass(frozen=True)
class Outcome:
    """What one stopping strategy did on one run."""

    run: str
    family: str
    budget: int
    trained: int  # epochs trained
    kept: int  # 0-based epoch whose weights are kept
    fired: bool
    gap: float

    @property
    def saved(self) -> float:
        return (self.budget - self.trained) / self.budget


def _outcome(run: Run, trained: int, kept: int, fired: bool) -> Outcome:
    acc = run.val_acc
    return Outcome(run.name, run.family, len(acc), trained, kept, fired, float(acc.max() - acc[kept]))


def config_key(rule: StoppingRule) -> str:
    """Every option of a fresh ``rule`` (its repr may leave some out, e.g. AlphaBelow's ``consecutive``)."""
    children = getattr(rule, "rules", None)
    if children is not None:
        return f"{type(rule).__name__}({', '.join(config_key(c) for c in children)})"
    options = {k: v for k, v in vars(rule).items() if not k.startswith("_") and k != "last_decision"}
    return f"{type(rule).__name__}{sorted(options.items())!r}"


def rule_outcome(run: Run, rule: StoppingRule, *, restore: bool) -> Outcome:
    """Replay ``rule`` on ``run``'s history (data-free) and score where it stopped or what it kept."""
    key = config_key(rule)  # replay each configuration once per run
    result = run.replays.get(key)
    if result is None:
        result = run.replays[key] = replay(rule, run.reports)
    last = len(run.epochs) - 1
    stop = result.stop_epoch
    trained = last + 1 if stop is None else min(stop, last) + 1
    kept = result.restore_epoch if restore and result.restore_epoch is not None else trained - 1
    return _outcome(run, trained, min(kept, last), stop is not None)


def val_loss_early_stopping(run: Run, patience: int, restore: bool = True) -> Outcome:
    """Keras/Lightning EarlyStopping(monitor="val_loss", patience, min_delta=0), restoring the best epoch (also
    when it never fires, like a checkpoint of the best val_loss) or keeping the weights where it stopped."""
    best, best_epoch, wait = math.inf, 0, 0
    for epoch, loss in enumerate(run.val_loss):
        if loss < best:
            best, best_epoch, wait = float(loss), epoch, 0
        else:
            wait += 1
            if wait >= patience:
                return _outcome(run, epoch + 1, best_epoch if restore else epoch, True)
    last = len(run.val_loss) - 1
    return _outcome(run, last + 1, best_epoch if restore else last, False)


def fixed_budget(run: Run, fraction: float) -> Outcome:
    """Train ``fraction`` of the run's budget (rounded up) and keep the last epoch."""
    trained = max(1, math.ceil(fraction * len(run.epochs)))
    return _outcome(run, trained, trained - 1, fraction < 1)


def fixed_epochs(run: Run, epochs: int) -> Outcome:
    """Train ``epochs`` epochs (the whole run if it is shorter) and keep the last one."""
    trained = min(epochs, len(run.epochs))
    return _outcome(run, trained, trained - 1, epochs < len(run.epochs))


# ------------------------------------------------------------------------------------------------ strategies


@dataclass(frozen=True)
class Strategy:
    """A way to stop (and keep weights): a data-free rule, or a baseline."""

    group: str  # the rule family (one tuned row per group)
    label: str  # the rule and its options (restore or not is ``restore``)
    outcome: Callable[[Run], Outcome]
    data_free: bool = True
    make: Callable[[], StoppingRule] | None = field(default=None, compare=False)
    restore: bool = False
    #: the same stop, keeping the weights at the stop (False) or restoring (True); None: no such choice
    variant: Callable[[Run, bool], Outcome] | None = field(default=None, compare=False)

    @property
    def full_label(self) -> str:
        return self.label + (" + restore" if self.restore else "")


def short_label(rule: StoppingRule) -> str:
    """``repr(rule)`` without quotes and without the options left at their defaults of no effect."""
    text = repr(rule)
    if isinstance(rule, AlphaBelow):
        text = text.replace(", consecutive=1", "")
    text = text.replace("'", "").replace("mode=", "")
    text = re.sub(r", (min_delta|start_from_epoch)=0(?=[,)])", "", text)
    text = re.sub(r"(Slowdown\([^()]*?), patience=1(?=[,)])", r"\1", text)
    text = text.replace("reduce=mean, fraction=0.5", "mean").replace("reduce=fraction, ", "")
    return text.replace("start_from_epoch=", "start=")


def _rule_strategies(group: str, makers: Iterable[Callable[[], StoppingRule]]) -> list[Strategy]:
    out = []
    for make in makers:
        label = short_label(make())

        def variant(run: Run, restore: bool, make: Callable[[], StoppingRule] = make) -> Outcome:
            return rule_outcome(run, make(), restore=restore)

        for restore in (False, True):

            def outcome(run: Run, variant: Any = variant, restore: bool = restore) -> Outcome:
                return variant(run, restore)  # type: ignore[no-any-return]

            out.append(Strategy(group, label, outcome, True, make, restore, variant))
    return out


def _grid(**axes: Sequence[Any]) -> list[dict[str, Any]]:
    combos: list[dict[str, Any]] = [{}]
    for key, values in axes.items():
        combos = [{**c, key: v} for c in combos for v in values]
    return combos


def data_free_strategies() -> list[Strategy]:
    """Every data-free rule configuration tried, grouped by rule family."""
    starts = (0, 3)
    s: list[Strategy] = []
    s += _rule_strategies(
        "AlphaBelow (mean)",
        [
            lambda g=g: AlphaBelow(g["threshold"], consecutive=g["consecutive"], start_from_epoch=g["start"])
            for g in _grid(threshold=(1.5, 1.75, 2.0, 2.5, 3.0), consecutive=(1, 3), start=starts)
        ],
    )
    s += _rule_strategies(
        "AlphaBelow (fraction of layers)",
        [
            lambda g=g: AlphaBelow(
                g["threshold"], reduce="fraction", fraction=g["fraction"], start_from_epoch=g["start"]
            )
            for g in _grid(threshold=(1.5, 2.0, 2.5, 3.0), fraction=(0.5, 1.0), start=starts)
        ],
    )
    for metric, mode in (
        ("alpha", "min"),
        ("stable_rank", "min"),
        ("rand_distance", "max"),
        ("alpha_weighted", "min"),
        ("log_spectral_norm", "min"),
        ("log_norm", "max"),
    ):
        s += _rule_strategies(
            f"Plateau({metric}, {mode})",
            [
                lambda g=g, metric=metric, mode=mode: Plateau(
                    metric, mode=mode, patience=g["patience"], start_from_epoch=g["start"]
                )
                for g in _grid(patience=(1, 2, 3, 5, 8, 12), start=starts)
            ],
        )
        s += _rule_strategies(
            f"Slowdown({metric}, {mode})",
            [
                lambda g=g, metric=metric, mode=mode: Slowdown(
                    metric, mode=mode, window=g["window"], ratio=g["ratio"], start_from_epoch=g["start"]
                )
                for g in _grid(window=(1, 2, 3, 5), ratio=(0.0, 0.1, 0.25, 0.5), start=starts)
            ],
        )
    for metric, mode in (("alpha", "min"), ("stable_rank", "min"), ("rand_distance", "max")):
        s += _rule_strategies(
            f"LayersPlateau({metric}, {mode})",
            [
                lambda g=g, metric=metric, mode=mode: LayersPlateau(
                    metric,
                    mode=mode,
                    patience=g["patience"],
                    fraction=g["fraction"],
                    start_from_epoch=g["start"],
                )
                for g in _grid(patience=(2, 3, 5), fraction=(0.34, 0.5, 0.75, 1.0), start=starts)
            ],
        )
    s += _rule_strategies(
        "TrapsAppear",
        [
            lambda g=g: TrapsAppear(g["min_traps"], consecutive=g["consecutive"], start_from_epoch=g["start"])
            for g in _grid(min_traps=(1, 2, 3, 5), consecutive=(1, 2, 3), start=starts)
        ],
    )
    s += _rule_strategies("NonFinite", [NonFinite])
    # Combinations: a trend rule on alpha with a trend rule on rand_distance (both must agree / either one),
    # and traps or non-finite weights as an emergency brake.
    s += _rule_strategies(
        "AllOf(Plateau(alpha), Slowdown(rand_distance))",
        [
            lambda g=g: AllOf(
                Plateau("alpha", mode="min", patience=g["patience"]),
                Slowdown("rand_distance", mode="max", window=g["window"], ratio=g["ratio"]),
            )
            for g in _grid(patience=(1, 2, 3, 5), window=(2, 3), ratio=(0.1, 0.25, 0.5))
        ],
    )
    s += _rule_strategies(
        "AnyOf(Plateau(alpha), TrapsAppear, NonFinite)",
        [
            lambda g=g: AnyOf(
                Plateau("alpha", mode="min", patience=g["patience"], start_from_epoch=g["start"]),
                TrapsAppear(g["min_traps"], consecutive=2),
                NonFinite(),
            )
            for g in _grid(patience=(2, 3, 5, 8), min_traps=(1, 3), start=starts)
        ],
    )
    return s


def shipped_strategies() -> list[Strategy]:
    """The rules as the README showed them before this benchmark (untuned)."""
    return [
        *_rule_strategies("as shipped", [lambda: AlphaBelow(2.0)])[:1],
        *_rule_strategies("as shipped", [lambda: Plateau("rand_distance", mode="max", patience=3)])[:1],
    ]


def fixed_epoch_strategies() -> list[Strategy]:
    """The same number of epochs for every run, chosen on the tuning half like a rule's options."""
    return [
        Strategy("fixed epochs", f"fixed budget: {n} epochs", lambda run, n=n: fixed_epochs(run, n))
        for n in range(1, 41)
    ]


def baseline_strategies(runs: Sequence[Run] | None = None) -> list[Strategy]:
    """EarlyStopping on val_loss, fixed budgets (with ``runs``: also the number of epochs tuned on their tuning
    half) and never stopping."""
    out = [
        Strategy(
            "val_loss EarlyStopping",
            f"EarlyStopping(val_loss, patience={p})",
            lambda run, p=p: val_loss_early_stopping(run, p),
            data_free=False,
            restore=True,
            variant=lambda run, restore, p=p: val_loss_early_stopping(run, p, restore),
        )
        for p in (3, 5)
    ]
    out += [
        Strategy(
            "fixed budget", f"fixed budget: {f:.0%} of the epochs", lambda run, f=f: fixed_budget(run, f)
        )
        for f in (0.5, 0.75)
    ]
    if runs is not None:
        (tuned,) = tune_groups(runs, fixed_epoch_strategies())
        out.append(
            Strategy(
                "fixed budget", tuned.strategy.label + " (chosen on the tuning half)", tuned.strategy.outcome
            )
        )
    out.append(Strategy("never stop", "never stop (last epoch)", lambda run: fixed_budget(run, 1.0)))
    return out


# ------------------------------------------------------------------------------------------------ scoring


@dataclass(frozen=True)
class Score:
    mean_gap: float
    worst_gap: float
    worst_run: str
    saved: float
    never: int
    runs: int
    by_family: Mapping[str, float]

    @property
    def meets_target(self) -> bool:
        return (
            self.mean_gap <= TARGET_MEAN_GAP
            and self.worst_gap <= TARGET_WORST_GAP
            and self.saved >= TARGET_SAVED
        )


def score(outcomes: Sequence[Outcome]) -> Score:
    gaps = np.array([o.gap for o in outcomes])
    worst = int(np.argmax(gaps))
    families: dict[str, list[float]] = {}
    for o in outcomes:
        families.setdefault(o.family, []).append(o.gap)
    return Score(
        mean_gap=float(gaps.mean()),
        worst_gap=float(gaps[worst]),
        worst_run=outcomes[worst].run,
        saved=float(np.mean([o.saved for o in outcomes])),
        never=sum(not o.fired for o in outcomes),
        runs=len(outcomes),
        by_family={k: float(np.mean(v)) for k, v in sorted(families.items())},
    )


def selection_key(s: Score) -> tuple[float, ...]:
    """How options are chosen on the tuning half: first save at least 25% of the epochs (a rule that saves
    nothing is not a stopping rule), then the smallest mean gap plus the excess of the worst gap over 0.05,
    then the smaller worst gap, then more epochs saved."""
    return (
        float(s.saved < TARGET_SAVED),
        round(s.mean_gap + max(0.0, s.worst_gap - TARGET_WORST_GAP), 12),
        round(s.worst_gap, 12),
        -s.saved,
    )


def split(runs: Sequence[Run], half: str) -> list[Run]:
    return [r for r in runs if r.split == half]


@dataclass
class Tuned:
    group: str
    strategy: Strategy
    tune: Score
    held_out: Score
    tried: int


def tune_groups(runs: Sequence[Run], strategies: Sequence[Strategy]) -> list[Tuned]:
    """For each group, the strategy with the best `selection_key` on the tuning half, scored on the held-out one."""
    tune_runs, held_runs = split(runs, "tune"), split(runs, "held-out")
    groups: dict[str, list[Strategy]] = {}
    for s in strategies:
        groups.setdefault(s.group, []).append(s)
    out = []
    for group, members in groups.items():
        scored = [
            (selection_key(score([m.outcome(r) for r in tune_runs])), i, m) for i, m in enumerate(members)
        ]
        _, _, best = min(scored, key=lambda item: (item[0], item[1]))
        out.append(
            Tuned(
                group,
                best,
                score([best.outcome(r) for r in tune_runs]),
                score([best.outcome(r) for r in held_runs]),
                len(members),
            )
        )
    return out


def choose_recommended(tuned: Sequence[Tuned]) -> Tuned:
    """The data-free group whose tuned strategy is best on the tuning half (same key): the measured choice."""
    candidates = [t for t in tuned if t.strategy.data_free and t.group != "as shipped"]
    return min(candidates, key=lambda t: selection_key(t.tune))


# ------------------------------------------------------------------------------------------------ report


def _fmt_gap(x: float) -> str:
    return f"{x:.3f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], align_left: int = 1) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i < align_left else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def held_out_table(tuned: Sequence[Tuned], baselines: Sequence[Strategy], runs: Sequence[Run]) -> str:
    """One row per rule family (its options chosen on the tuning half) and per baseline, scored on the held-out
    half: where it stopped, and the gap keeping the weights at the stop or restoring its best epoch (``*``: the
    choice made on the tuning half)."""
    held, tune = split(runs, "held-out"), split(runs, "tune")
    header = [
        "rule (options chosen on the tuning half)",
        "stopped after",
        "saved",
        "never fired",
        "gap at stop: mean / worst",
        "restored: mean / worst",
        "tune: gap / saved",
    ]

    def row(label: str, strategy: Strategy, tune_score: Score) -> list[str]:
        chosen = [strategy.outcome(r) for r in held]
        trained = [o.trained for o in chosen if o.fired]
        stops = f"{np.median(trained):g} ({min(trained)}-{max(trained)})" if trained else "-"
        cells = []
        for restore in (False, True):
            if strategy.variant is None:
                outs = chosen if not restore else None
            else:
                outs = [strategy.variant(r, restore) for r in held]
            if outs is None:
                cells.append("-")
                continue
            s = score(outs)
            mark = "*" if strategy.variant is not None and restore == strategy.restore else ""
            cells.append(f"{s.mean_gap:.3f} / {s.worst_gap:.3f}{mark}")
        h = score(chosen)
        never = f"{h.never}/{h.runs}" if strategy.group != "never stop" else "-"
        return [
            label,
            stops,
            f"{h.saved:.0%}",
            never,
            *cells,
            f"{tune_score.mean_gap:.3f} / {tune_score.saved:.0%}",
        ]

    rows = [
        row(t.strategy.label + (" [as shipped]" if t.group == "as shipped" else ""), t.strategy, t.tune)
        for t in sorted(tuned, key=lambda t: (t.group == "as shipped", selection_key(t.held_out)))
    ]
    for b in baselines:
        label = ("[data] " if not b.data_free else "[baseline] ") + b.label
        rows.append(row(label, b, score([b.outcome(r) for r in tune])))
    return _table(header, rows)


def family_table(strategies: Sequence[tuple[str, Strategy]], runs: Sequence[Run]) -> str:
    held = split(runs, "held-out")
    families = sorted({r.family for r in held})
    header = ["held-out mean gap by family", *families]
    rows = []
    for name, s in strategies:
        by = score([s.outcome(r) for r in held]).by_family
        rows.append([name, *(_fmt_gap(by[f]) for f in families)])
    counts = ["runs", *(str(sum(r.family == f for r in held)) for f in families)]
    return _table(header, [counts, *rows])


def per_run_table(strategy: Strategy, runs: Sequence[Run]) -> str:
    header = ["held-out run", "budget", "best acc (epoch)", "stopped after", "kept epoch", "acc kept", "gap"]
    rows = []
    for run in split(runs, "held-out"):
        o = strategy.outcome(run)
        best = int(np.argmax(run.val_acc))
        rows.append(
            [
                run.name,
                str(o.budget),
                f"{run.val_acc[best]:.3f} ({best + 1})",
                str(o.trained) + ("" if o.fired else " (never)"),
                str(o.kept + 1),
                f"{run.val_acc[o.kept]:.3f}",
                _fmt_gap(o.gap),
            ]
        )
    return _table(header, rows)


def evaluate(runs: Sequence[Run]) -> tuple[list[Tuned], Tuned]:
    tuned = tune_groups(runs, [*data_free_strategies(), *shipped_strategies()])
    # "as shipped" holds two untuned rules: report both, not the better one.
    shipped = [t for t in tuned if t.group == "as shipped"]
    tuned = [t for t in tuned if t.group != "as shipped"]
    for s in shipped_strategies():
        tuned.append(
            Tuned(
                "as shipped",
                s,
                score([s.outcome(r) for r in split(runs, "tune")]),
                score([s.outcome(r) for r in split(runs, "held-out")]),
                1,
            )
        )
    del shipped
    return tuned, choose_recommended(tuned)


def report(runs: Sequence[Run], *, smoke: bool = False) -> str:
    tuned, best = evaluate(runs)
    baselines = baseline_strategies(runs)
    tune_n, held_n = len(split(runs, "tune")), len(split(runs, "held-out"))
    h = best.held_out
    rec = recommended()
    lines = [
        f"{len(runs)} runs: {tune_n} tune the rules' options, {held_n} are held out "
        f"({len({r.family for r in runs})} families; {sum(t.tried for t in tuned if t.group != 'as shipped')} data-free configurations of "
        f"{sum(t.group != 'as shipped' for t in tuned)} rule families tried).",
        "gap = best validation accuracy of the run - accuracy of the weights kept; saved = share of the budget "
        "not trained; [data] uses the validation set.",
        "",
        "Held-out half:",
        held_out_table(tuned, baselines, runs),
        "",
        family_table(
            [
                ("best data-free: " + best.strategy.full_label, best.strategy),
                *((b.full_label, b) for b in baselines if "50%" not in b.label),
            ],
            runs,
        ),
        "",
        f"Best data-free rule (chosen on the tuning half): {best.strategy.full_label}",
        per_run_table(best.strategy, runs),
        "",
        (
            f"Target on the held-out half: mean gap <= {TARGET_MEAN_GAP}, worst <= {TARGET_WORST_GAP}, "
            f">= {TARGET_SAVED:.0%} of the epochs saved. Best data-free rule: mean {h.mean_gap:.3f}, worst "
            f"{h.worst_gap:.3f} ({h.worst_run}), saved {h.saved:.0%}: "
            + ("target MET." if h.meets_target else "target MISSED.")
        ),
    ]
    if not smoke:
        agrees = best.strategy.make is not None and repr(best.strategy.make()) == repr(rec)
        lines.append(
            f"ww_callbacks.stopping.recommended() = {rec!r}: "
            + (
                "the rule chosen here."
                if agrees
                else f"NOT the rule chosen here ({best.strategy.full_label})"
            )
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ plot


#: The held-out runs the plot in docs/stopping.md shows (one per family, two MLPs); other run sets: one per family.
PLOT_RUNS = (
    "mlp_w256_noise0.4_s1",
    "mlp_w64_noise0_s1",
    "cnn_noise0.4_s1",
    "grok_frac0.5_wd2_lr0.003_s1",
    "keras_w128_noise0.2_s1",
    "seedgrid_lr0.05_bs64_s1",
)


def plot_trajectories(runs: Sequence[Run], path: Path, names: Sequence[str] = PLOT_RUNS) -> Path:
    """Validation accuracy of a few held-out runs, the signal of the best data-free rule, and where that rule,
    the rules as shipped and val_loss EarlyStopping stopped."""
    from matplotlib.figure import Figure

    _, best = evaluate(runs)
    held = split(runs, "held-out")
    chosen = [r for name in names for r in held if r.name == name]
    if not chosen:
        picked: dict[str, Run] = {}
        for run in held:
            picked.setdefault(run.family, run)
        chosen = list(picked.values())
    others = [
        (s, marker, color)
        for s, marker, color in zip(
            [*shipped_strategies(), baseline_strategies()[1]],
            ("v", "^", "s"),
            ("C4", "C5", "C2"),
            strict=True,
        )
    ]
    cols = min(3, len(chosen))
    rows = math.ceil(len(chosen) / cols)
    fig = Figure(figsize=(4.6 * cols, 3.4 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    rule = best.strategy.make() if best.strategy.make is not None else None
    metric = rule.monitor if rule is not None and rule.monitor else "alpha"
    for ax, run in zip(axes, chosen, strict=False):
        epochs = np.arange(1, len(run.epochs) + 1)
        ax.plot(epochs, run.val_acc, "-", color="C0", label="validation accuracy")
        if run.family == "grok":
            ax.plot(epochs, [e["train_acc"] for e in run.epochs], ":", color="C0", label="training accuracy")
        twin = ax.twinx()
        values = [(e + 1, rep.summary.get(metric, math.nan)) for e, rep in run.reports]
        twin.plot(*zip(*values, strict=True), "-", color="C1", alpha=0.6, lw=1)
        twin.set_ylabel(f"mean {metric} (no data)", color="C1", fontsize=8)
        o = best.strategy.outcome(run)
        ax.axvline(o.trained, color="C3", ls="--", lw=1, label=f"stop: {best.strategy.full_label}")
        ax.plot(o.kept + 1, run.val_acc[o.kept], "o", color="C3", mfc="none", ms=10)
        for strategy, marker, color in others:
            out = strategy.outcome(run)
            if out.fired:
                ax.plot(
                    out.trained, run.val_acc[out.trained - 1], marker, color=color, ms=7, label=strategy.label
                )
            if not strategy.data_free:  # EarlyStopping restores its best epoch
                ax.plot(out.kept + 1, run.val_acc[out.kept], marker, color=color, mfc="none", ms=10)
        top = int(np.argmax(run.val_acc))
        ax.plot(top + 1, run.val_acc[top], "*", color="k", ms=10, label="best epoch")
        ax.set_title(run.label, fontsize=8)
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation accuracy", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in axes[len(chosen) :]:
        ax.set_visible(False)
    handles: dict[str, Any] = {}
    for ax in axes[: len(chosen)]:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncol=3, fontsize=7)
    fig.suptitle(
        "Held-out runs: where the data-free rules and val_loss EarlyStopping(patience=5) stop "
        "(filled markers, dashed line) and which weights they keep (open markers)",
        fontsize=9,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    return path
