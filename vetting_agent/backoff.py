"""Capped exponential backoff with jitter.

Every retry loop of the agent (spool delivery, hello/claim, host polling) uses this
so that a thousand agents that lost the orchestrator at the same moment do not come
back in lock-step ("equal jitter": half the delay is fixed, half is random).
"""

from __future__ import annotations

import random


class Backoff:
    """``next()`` returns the delay before the next attempt; ``reset()`` after a success."""

    def __init__(
        self,
        initial: float = 0.5,
        cap: float = 30.0,
        factor: float = 2.0,
        rng: random.Random | None = None,
    ) -> None:
        if initial <= 0 or cap < initial or factor < 1:
            raise ValueError("backoff needs 0 < initial <= cap and factor >= 1")
        self.initial = initial
        self.cap = cap
        self.factor = factor
        self.attempts = 0
        self._rng = rng or random.Random()

    def ceiling(self) -> float:
        """The un-jittered delay for the current attempt (capped)."""
        return min(self.cap, self.initial * self.factor ** min(self.attempts, 64))

    def next(self) -> float:
        ceiling = self.ceiling()
        self.attempts += 1
        return ceiling / 2 + self._rng.uniform(0, ceiling / 2)

    def reset(self) -> None:
        self.attempts = 0


def jittered(interval: float, fraction: float = 0.1, rng: random.Random | None = None) -> float:
    """``interval`` ± ``fraction`` (heartbeats and the host poll spread out over time)."""
    r = rng or random
    return max(0.0, interval * (1 + r.uniform(-fraction, fraction)))
