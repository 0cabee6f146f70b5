"""Run events reach the example's ``gotify`` notifier through Vetting's real
notification dispatcher, with the plugin found through its entry point."""

import json
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import anyio
import pytest

from vetting_core import RunEvent, RunEventKind, Severity
from vetting_core.config import settings_from_dict
from vetting_core.plugins import load_registry

pytestmark = pytest.mark.anyio


@pytest.fixture
def gotify():
    received = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            received.append((self.path, self.headers.get("X-Gotify-Key"), json.loads(body)))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", received
    server.shutdown()
    server.server_close()


def event(kind, severity):
    return RunEvent(kind=kind, severity=severity, ts=datetime.now(UTC), run_id=9, host_name="r1u7",
                    stage="Memtester", message="memtester found errors")


async def test_routed_by_kind_and_severity(gotify):
    from vetting_notifiers.dispatch import NotificationDispatcher

    url, received = gotify
    registry = load_registry()  # entry points: the installed example plugin
    assert registry.owner("notifiers", "gotify") == "example"
    settings = settings_from_dict(
        {
            "notifications": {
                "targets": [{"name": "phone", "kind": "gotify", "config": {"url": url, "token": "T0k"}}],
                "routes": [{"targets": ["phone"], "events": ["StageFailed"], "severities": ["critical"]}],
            }
        }
    )
    attempts = []

    async def record(attempt):
        attempts.append(attempt)

    async with NotificationDispatcher(registry, settings.notifications, record) as dispatcher:
        assert dispatcher.publish(event(RunEventKind.StageFailed, Severity.critical)) == ["phone"]
        assert dispatcher.publish(event(RunEventKind.RunCompleted, Severity.info)) == []
        with anyio.fail_after(10):
            while not attempts:
                await anyio.sleep(0.02)
    [(path, key, body)] = received
    assert path == "/message" and key == "T0k"
    assert body["title"] == "[Vetting] StageFailed: r1u7 / Memtester" and body["priority"] == 8
    assert [(a.target, a.kind, a.outcome) for a in attempts] == [("phone", "gotify", "delivered")]


async def test_bad_gotify_config_is_refused_at_start_naming_the_target():
    from vetting_notifiers.config import NotifierConfigError
    from vetting_notifiers.dispatch import build_targets

    settings = settings_from_dict(
        {"notifications": {"targets": [{"name": "phone", "kind": "gotify", "config": {"url": "ftp://x", "token": "t"}}]}}
    )
    with pytest.raises(NotifierConfigError, match=r"targets\[0\] \(phone\): gotify config: url must be http"):
        build_targets(load_registry(), settings.notifications)
