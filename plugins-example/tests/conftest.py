"""The author's kit from Vetting: run_stage, fake_tools, assert_measured..."""

from pathlib import Path

import pytest

pytest_plugins = ["vetting_core.testing"]

FIXTURES = Path(__file__).parent / "fixtures"
MEMTESTER_FIXTURES = FIXTURES / "memtester" / "4.6.0"


@pytest.fixture
def memtester_fixtures() -> Path:
    return MEMTESTER_FIXTURES
