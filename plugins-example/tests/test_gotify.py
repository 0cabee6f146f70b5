"""The gotify notifier against a real HTTP receiver on loopback."""

import json
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import msgspec
import pytest
from vetting_core import RunEvent, RunEventKind, Severity

from vetting_example import plugin
from vetting_example.gotify import GotifyConfig, GotifyError, build_message


class Receiver:
    """A Gotify stand-in: records POST /message, answers with the configured status."""

    def __init__(self):
        self.requests = []
        self.status = 200
        self.delay_s = 0.0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.requests.append((self.path, dict(self.headers), body))
                time.sleep(receiver.delay_s)
                payload = b'{"id": 1}' if receiver.status == 200 else b'{"error":"Unauthorized"}'
                self.send_response(receiver.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/gotify"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def spec(vetting_registry):
    return vetting_registry(plugin).notifiers["gotify"]


def event(**kw):
    base = dict(
        kind=RunEventKind.StageFailed,
        severity=Severity.critical,
        ts=datetime.now(UTC),
        run_id=42,
        host_name="rack3-u12",
        stage="Memtester",
        message="18 memory error(s) reported",
        url="http://vetting.example/runs/42",
    )
    base.update(kw)
    return RunEvent(**base)


def make(spec, **config):
    # the server converts the target's config dict into config_type, then calls factory
    return spec.factory(msgspec.convert(config, spec.config_type))


@pytest.mark.anyio
async def test_delivers_to_gotify(spec, receiver):
    notifier = make(spec, url=receiver.url, token="AbC.123")
    await notifier.send(event())
    [(path, headers, body)] = receiver.requests
    assert path == "/gotify/message"
    assert headers["X-Gotify-Key"] == "AbC.123"
    msg = json.loads(body)
    assert msg["title"] == "[Vetting] StageFailed: rack3-u12 / Memtester"
    assert msg["priority"] == 8
    assert msg["message"].splitlines() == ["18 memory error(s) reported", "run #42", "http://vetting.example/runs/42"]
    assert msg["extras"]["client::notification"]["click"]["url"] == "http://vetting.example/runs/42"


@pytest.mark.anyio
async def test_rejected_token_raises_so_the_dispatcher_retries(spec, receiver):
    receiver.status = 401
    notifier = make(spec, url=receiver.url, token="wrong")
    with pytest.raises(GotifyError, match=r"answered 401: .*Unauthorized"):
        await notifier.send(event())


@pytest.mark.anyio
async def test_hanging_receiver_times_out(spec, receiver):
    receiver.delay_s = 3
    notifier = make(spec, url=receiver.url, token="t", timeout_s=0.3)
    started = time.monotonic()
    with pytest.raises(GotifyError, match="ReadTimeout"):
        await notifier.send(event())
    assert time.monotonic() - started < 2


@pytest.mark.anyio
async def test_nobody_listening(spec):
    notifier = make(spec, url="http://127.0.0.1:9", token="t", timeout_s=1)
    with pytest.raises(GotifyError, match="ConnectError"):
        await notifier.send(event())


@pytest.mark.parametrize(
    "config, words",
    [
        ({"url": "ftp://x", "token": "t"}, "url must be http"),
        ({"url": "http://", "token": "t"}, "url must be http"),
        ({"url": "http://x", "token": "  "}, "token is empty"),
        ({"url": "http://x", "token": "t", "timeout_s": 0}, "timeout_s must be positive"),
    ],
)
def test_bad_config_is_refused_by_the_factory(spec, config, words):
    with pytest.raises(ValueError, match=words):
        make(spec, **config)


def test_unknown_config_key_is_refused_by_the_schema(spec):
    with pytest.raises(msgspec.ValidationError, match="tokne"):
        msgspec.convert({"url": "http://x", "tokne": "t"}, spec.config_type)
    assert spec.config_type is GotifyConfig


def test_priority_follows_severity():
    assert build_message(event(severity=Severity.info, kind=RunEventKind.RunCompleted, stage=None))["priority"] == 2
    assert build_message(event(severity=Severity.warning))["priority"] == 5
    msg = build_message(event(url=None, host_name=""))
    assert "client::notification" not in msg["extras"] and msg["title"].endswith("unknown host / Memtester")
    assert build_message(event(host_name="", host_id=7))["title"] == "[Vetting] StageFailed: host #7 / Memtester"
