"""When the engine analyzes: `EpochSchedule` (every n-th epoch) and the per-analysis random generator.

A schedule answers `should_run` for a training position; the callbacks ask it at their epoch-end hook. A step
schedule (every n optimizer steps) belongs here too, answering for a step instead of an epoch.

Example:
    >>> [e for e in range(6) if EpochSchedule(every_n_epochs=2).should_run(e)]
    [1, 3, 5]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["EpochSchedule", "fresh_seed", "rng_for"]


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
