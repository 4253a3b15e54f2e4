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

__all__ = ["EpochSchedule", "StepSchedule", "fresh_seed", "rng_for"]


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
