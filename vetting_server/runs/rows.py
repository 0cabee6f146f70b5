"""What the run modules share: JSON columns, the state groups they test, and the
run's reason and result when a stage stops it."""

from __future__ import annotations

from typing import Any

import msgspec

from vetting_core.model import Verdict

json_bytes = msgspec.json.encode
# stages the pipeline moves past (a stage that could not run, when that did not stop the run)
SETTLED = frozenset(v.value for v in (Verdict.passed, Verdict.skipped, Verdict.cannot_run))


def jdump(v: Any) -> str:
    return json_bytes(v).decode()


def jload(v: str | None, default: Any = None) -> Any:
    return default if v is None else msgspec.json.decode(v)


def run_reason(stage: str, verdict: Verdict, reason: str | None) -> str:
    """The run's reason when ``stage`` stops it: a stage that could not run says so."""
    if verdict is Verdict.cannot_run:
        return f"{stage} could not run here: {reason or 'no reason given'} (not a hardware failure)"
    return reason or f"stage {stage} {verdict.value}"


def failed_result(verdict: Verdict) -> dict[str, str]:
    """``runs.result`` of a run a stage stopped: ``incomplete`` when it only could not run."""
    return {"result": "incomplete"} if verdict is Verdict.cannot_run else {}
