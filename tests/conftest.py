"""Shared test configuration. Areas keep their own fixtures in their own conftest."""

import pytest


@pytest.fixture(scope="session")
def anyio_backend():
    # anyio's own pytest plugin, asyncio backend only (as in production)
    return "asyncio"
