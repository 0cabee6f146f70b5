"""Fixtures of the stage tests (their helpers: :mod:`.helpers`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpers import FIXTURES, Loops, _loop_refused


@pytest.fixture
def fixtures() -> Path:
    return FIXTURES


@pytest.fixture
def loops(tmp_path: Path) -> Iterator[Loops]:
    why = _loop_refused()
    if why:
        pytest.skip(why)
    lp = Loops(tmp_path)
    try:
        yield lp
    finally:
        lp.close()
