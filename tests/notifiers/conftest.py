from __future__ import annotations

from datetime import UTC, datetime

import pytest

from vetting_core.events import RunEvent, RunEventKind
from vetting_core.model import Severity

from .receivers import HttpReceiver, make_cert


@pytest.fixture(scope="module")
def http_receiver():
    receiver = HttpReceiver().start()
    yield receiver
    receiver.stop()


@pytest.fixture(scope="session")
def tls_cert(tmp_path_factory):
    return make_cert(tmp_path_factory.mktemp("tls"))


def make_event(kind: RunEventKind = RunEventKind.StageFailed, **kw) -> RunEvent:
    base = dict(
        kind=kind,
        severity=Severity.info if kind is RunEventKind.RunCompleted else Severity.critical,
        ts=datetime(2026, 11, 23, 1, 2, 3, tzinfo=UTC),
        run_id=42,
        host_id=7,
        host_name="web-07",
        stage="SMART",
        state="FailedHolding",
        message="reallocated sectors grew by 12 on /dev/sda",
        url="http://vetting.example/runs/42",
    )
    base.update(kw)
    return RunEvent(**base)


@pytest.fixture
def event() -> RunEvent:
    return make_event()
