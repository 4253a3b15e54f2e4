"""When the engine analyzes: `EpochSchedule` (every n-th epoch), `StepSchedule` (every n-th optimizer step) and
the per-analysis random generator.

A schedule answers `should_run` for a training position: an epoch index for `EpochSchedule` (asked at the
callbacks' epoch-end hooks), a count of optimizer steps done for `StepSchedule` (asked after each step).

Example:
    >>> [e for e in range(6) if EpochSchedule(every_n_epochs=2).should_run(e)]
    [1, 3, 5]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["EpochSchedule", "Schedule", "StepSchedule", "fresh_seed", "make_schedule", "rng_for"]


@dataclass(frozen=True)
class EpochSchedule:
    """Analyze at the end of every ``every_n_epochs``-th epoch (0-based epochs ``n-1, 2n-1, ...``).

    Example:
        >>> EpochSchedule(3).should_run(2), EpochSchedule(3).should_run(3)
        (True, False)
    """

    every_n_epochs: int = 1

    def __post_init__(self) -> None:
        if int(self.every_n_epochs) < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {self.every_n_epochs}")

    def should_run(self, epoch: int) -> bool:
        """Whether ``epoch`` (0-based) is an analysis epoch: every ``every_n_epochs``-th, counting from 1."""
        return (int(epoch) + 1) % int(self.every_n_epochs) == 0

    def position(self, *, epoch: int, step: int | None = None) -> int:
        """The analysis' position for its random generator: the epoch (so epoch schedules keep their numbers).

        Example:
            >>> EpochSchedule(2).position(epoch=3, step=40)
            3
        """
        return int(epoch)


@dataclass(frozen=True)
class StepSchedule:
    """Analyze after every ``every_n_steps``-th optimizer step (Lightning ``ModelCheckpoint``'s convention).

    ``should_run(step)`` takes the number of optimizer steps done so far (Lightning's ``global_step`` after the
    step, Keras' batches seen, the Hugging Face ``state.global_step``) and is true when it is a positive
    multiple of ``every_n_steps``.

    Example:
        >>> [s for s in range(7) if StepSchedule(every_n_steps=3).should_run(s)]
        [3, 6]
    """

    every_n_steps: int = 1

    def __post_init__(self) -> None:
        if int(self.every_n_steps) < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {self.every_n_steps}")

    def should_run(self, step: int) -> bool:
        """Whether ``step`` optimizer steps done is an analysis point: a positive multiple of ``every_n_steps``."""
        return int(step) > 0 and int(step) % int(self.every_n_steps) == 0

    def position(self, *, epoch: int, step: int | None = None) -> int:
        """The analysis' position for its random generator: the optimizer steps done (the same on every rank
        and after a resume, whatever the epoch length).

        Example:
            >>> StepSchedule(5).position(epoch=0, step=10)
            10
        """
        if step is None:
            raise ValueError("a step schedule needs the step of the analysis")
        return int(step)


#: Either schedule.
Schedule = EpochSchedule | StepSchedule


def make_schedule(
    every_n_epochs: int | None, every_n_steps: int | None, *, steps_name: str = "every_n_steps"
) -> Schedule:
    """The schedule a callback asked for: one of ``every_n_epochs`` / ``every_n_steps`` (neither: every epoch).

    ``steps_name`` is the callback's name of the step option (``every_n_train_steps``, ``every_n_batches``),
    for the error message.

    Example:
        >>> make_schedule(None, None), make_schedule(None, 100)
        (EpochSchedule(every_n_epochs=1), StepSchedule(every_n_steps=100))
        >>> make_schedule(2, 100, steps_name="every_n_batches")
        Traceback (most recent call last):
        ...
        ValueError: set one of every_n_epochs=2 / every_n_batches=100, not both
    """
    if every_n_steps is None:
        return EpochSchedule(1 if every_n_epochs is None else int(every_n_epochs))
    if every_n_epochs is not None:
        raise ValueError(
            f"set one of every_n_epochs={every_n_epochs} / {steps_name}={every_n_steps}, not both"
        )
    return StepSchedule(int(every_n_steps))


def rng_for(seed: int, position: int) -> np.random.Generator:
    """The shuffles' generator of one analysis: depends only on (seed, position), so ranks and resumes agree.

    Example:
        >>> float(rng_for(3, 2).random()) == float(rng_for(3, 2).random())
        True
    """
    return np.random.default_rng([int(seed), int(position)])


def fresh_seed() -> int:
    """A seed from OS entropy, never from the global numpy/random state; 63 bits keep it an int64 everywhere.

    Example:
        >>> 0 <= fresh_seed() < 2**63
        True
    """
    entropy: int = np.random.SeedSequence().entropy  # type: ignore[assignment]  # an int when none is passed
    return int(entropy) % (2**63)
