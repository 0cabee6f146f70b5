"""A stand-in ``smartctl`` for disks this machine lacks: it answers each invocation with
a captured JSON document chosen by its arguments, and exits with the capture's own
``smartctl.exit_status``.

    fake = FakeSmartctl(tmp_path, monkeypatch)
    fake.answer(r"--scan-open", scan_json)            # first matching rule wins
    fake.answer(r" -x .*/dev/bus/0$", capture_path)
    fake.answer(r" -t short ", [first, second])       # successive calls: one each, last repeats
    ... run the stage ...
    fake.calls()                                      # the argv of every call, in order

Rules are regular expressions searched in ``" ".join(argv)``; an unmatched call
prints ``{"smartctl": {"exit_status": 0}}`` (smartctl saying nothing).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

_SCRIPT = r'''#!{python}
import fcntl, json, os, re, sys
state = {state!r}
line = " ".join(sys.argv[1:])
doc = None
with open(state + ".lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # the stage reads disks concurrently
    with open(state) as fh:
        cfg = json.load(fh)
    with open(state + ".calls", "a") as fh:
        fh.write(json.dumps(sys.argv[1:]) + "\n")
    for i, (pattern, docs) in enumerate(cfg["rules"]):
        if re.search(pattern, line):
            n = cfg["served"].get(str(i), 0)
            cfg["served"][str(i)] = n + 1
            with open(state, "w") as fh:
                json.dump(cfg, fh)
            doc = docs[min(n, len(docs) - 1)]
            break
if doc is not None:
    sys.stdout.write(doc)
    try:
        code = json.loads(doc)["smartctl"]["exit_status"]
    except Exception:
        code = 0
    sys.exit(code)
sys.stdout.write('{{"smartctl": {{"exit_status": 0}}}}')
'''


class FakeSmartctl:
    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.bindir = tmp_path / "fake-smartctl"
        self.bindir.mkdir(parents=True, exist_ok=True)
        self.state = self.bindir / "rules.json"
        self._rules: list[tuple[str, list[str]]] = []
        self._save()
        script = self.bindir / "smartctl"
        script.write_text(_SCRIPT.format(python=sys.executable, state=str(self.state)))
        script.chmod(0o755)
        monkeypatch.setenv("PATH", f"{self.bindir}{os.pathsep}{os.environ['PATH']}")

    def answer(self, pattern: str, docs: Any) -> None:
        """Answer calls matching ``pattern`` with ``docs``: a path, a dict, a JSON string,
        or a list of those served one per call (the last one repeats)."""
        items = docs if isinstance(docs, list) else [docs]
        self._rules.append((pattern, [self._text(d) for d in items]))
        self._save()

    @staticmethod
    def _text(doc: Any) -> str:
        if isinstance(doc, Path):
            return doc.read_text()
        if isinstance(doc, dict):
            return json.dumps(doc)
        return str(doc)

    def _save(self) -> None:
        self.state.write_text(json.dumps({"rules": self._rules, "served": {}}))

    def calls(self) -> list[list[str]]:
        calls = Path(str(self.state) + ".calls")
        return [json.loads(line) for line in calls.read_text().splitlines()] if calls.exists() else []
