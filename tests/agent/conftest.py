"""Fixtures of the agent tests: a registry with the test-only chatter plugin."""

from __future__ import annotations

import pytest

from vetting_core.plugins import load_registry

from . import chatter_plugin


@pytest.fixture
def registry():
    """Every installed plugin plus the chatter plugin (registered by hand)."""
    return load_registry(plugins=[("agent-chatter", chatter_plugin)])


@pytest.fixture
def bare_registry():
    """Only the core plugin and the chatter plugin: no real stages, no entry points."""
    from vetting_core import builtin

    return load_registry(entry_points=False, plugins=[("core", builtin), ("agent-chatter", chatter_plugin)])
