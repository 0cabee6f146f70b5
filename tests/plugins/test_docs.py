"""The plugin author guide (docs/plugins.md) documents every hook and the stage API.

Fails when a hook is added to vetting_core/hookspecs.py without a section in the
guide, when a StageContext method is not mentioned, or when a Python example in the
guide no longer compiles.
"""

import inspect
import re
from pathlib import Path

import pytest

from vetting_core import hookspecs
from vetting_core.context import StageContext
from vetting_core.testing import __all__ as testing_api

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "plugins.md"
TEXT = GUIDE.read_text()
CODE_BLOCKS = re.findall(r"```python\n(.*?)```", TEXT, re.S)

HOOKS = sorted(
    name
    for name, obj in vars(hookspecs).items()
    if name.startswith("vetting_") and callable(obj) and hasattr(obj, "vetting_spec")
)


def test_hooks_were_found():
    # guards the test itself: a refactor of the spec module must not make it vacuous
    assert len(HOOKS) >= 8 and "vetting_stages" in HOOKS


def undocumented(text: str) -> list[str]:
    """Hooks without a heading or a ``def <hook>(`` code example in ``text``."""
    headings = [line.lstrip("#").strip().strip("`") for line in text.splitlines() if line.startswith("#")]
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    return [h for h in HOOKS if h not in headings and not any(f"def {h}(" in b for b in blocks)]


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_section_with_an_example(hook):
    """A heading named after the hook, and an ``@hookimpl def <hook>():`` example."""
    assert hook not in undocumented(TEXT), f"hook {hook} (vetting_core/hookspecs.py) is not documented in {GUIDE}"
    assert any(f"def {hook}(" in block for block in CODE_BLOCKS), f"{hook} has no example in {GUIDE}"


def test_the_check_notices_a_missing_hook():
    start = TEXT.index("### `vetting_probes`")
    end = TEXT.index("### `vetting_threshold_operators`")
    assert undocumented(TEXT[:start] + TEXT[end:]) == ["vetting_probes"]


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hookspec_has_an_example_in_its_docstring(hook):
    doc = inspect.getdoc(getattr(hookspecs, hook)) or ""
    assert "Example::" in doc and f"def {hook}(" in doc, f"{hook}'s docstring has no example"


STAGE_API = sorted(
    name
    for name, member in vars(StageContext).items()
    if not name.startswith("_") and (callable(member) or isinstance(member, property))
)


@pytest.mark.parametrize("method", STAGE_API)
def test_stage_context_methods_are_documented(method):
    called = "" if isinstance(vars(StageContext)[method], property) else "("
    assert f"ctx.{method}{called}" in TEXT, f"StageContext.{method} is not documented in {GUIDE}"


@pytest.mark.parametrize("name", testing_api)
def test_author_kit_is_documented(name):
    assert name in TEXT, f"vetting_core.testing.{name} is not documented in {GUIDE}"


@pytest.mark.parametrize("index", range(len(CODE_BLOCKS)))
def test_python_examples_compile(index):
    compile(CODE_BLOCKS[index], f"{GUIDE.name}[python block {index}]", "exec")


def test_documents_blocking_and_packaging():
    for needle in ("VETTING_DISABLE_PLUGINS", "plugins: {disable:", "[project.entry-points.vetting]", "vetting plugins list"):
        assert needle in TEXT
