"""The author's kit fixtures for the framework-side plugin tests.

``pytest_plugins`` is only honoured in the top-level conftest, so the fixtures are
imported here instead (the way docs/plugins.md tells authors with nested suites).
"""

from vetting_core.testing import fake_tools, stage_workdir, vetting_registry  # noqa: F401
