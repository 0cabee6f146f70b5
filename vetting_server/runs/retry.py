"""Retrying a unit of work that lost a compare-and-set race.

A transition is applied with ``UPDATE runs … WHERE version = :seen``: when another
request (or another replica) advanced the run first, the update touches no row and
:class:`TransitionConflict` is raised. The work is then redone from a fresh read of
the run, a few times; a run that keeps changing answers 409 ("retry") rather than
making the caller wait.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from ..errors import conflict

T = TypeVar("T")

ATTEMPTS = 3


class TransitionConflict(Exception):
    """The run changed between the read and the compare-and-set update."""


async def retry_on_conflict(run_id: int, work: Callable[[], Awaitable[T]], attempts: int = ATTEMPTS) -> T:
    """``await work()``, again while it raises :class:`TransitionConflict` (each try
    opens its own unit of work); after ``attempts`` tries: 409."""
    for _ in range(attempts):
        try:
            return await work()
        except TransitionConflict:
            continue
    raise conflict(f"run {run_id} is changing; retry")
