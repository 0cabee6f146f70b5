"""The serving path (issue 18, items 7 and 8): header and body timeouts on uvicorn's
protocol (the edge one included), so that slow clients are cut off and never delay
heartbeats; TLS from ``server.tls`` with HSTS. Served exactly as ``vetting serve`` does
(``serving.uvicorn_config``), on loopback."""

from __future__ import annotations

import ssl
import statistics
import subprocess
import time

import anyio
import httpx
import pytest

from vetting_core.config import ConfigError, settings_from_dict
from vetting_server.app import create_app

from .conftest import Env, create_operator_token, make_settings, serve_on_socket

pytestmark = pytest.mark.anyio


@pytest.fixture
def settings_overrides():
    return {"server": {"header_timeout_s": 1.0, "body_timeout_s": 1.5}}


async def test_slowloris_is_timed_out_and_does_not_delay_heartbeats(socket_env):
    env = socket_env
    run_id, tok = await env.running()
    port = int(str(env.client.base_url).rsplit(":", 1)[1].rstrip("/"))
    replies: dict[str, list[bytes]] = {"headers": [], "body": [], "silent": []}
    started = time.monotonic()

    async def slow(kind: str, i: int) -> None:
        stream = await anyio.connect_tcp("127.0.0.1", port)
        got = bytearray()

        async def read() -> None:  # as it comes: a byte sent after the server closed would reset it
            with anyio.move_on_after(5.0):
                while True:
                    try:
                        got.extend(await stream.receive())
                    except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                        return

        async def dribble(data: bytes, gap: float) -> None:
            for k in range(len(data)):
                if got:
                    return
                await stream.send(data[k:k + 1])
                await anyio.sleep(gap)

        async with stream, anyio.create_task_group() as tg:
            tg.start_soon(read)
            if kind == "headers":  # a request line and headers, one byte at a time
                await dribble(f"POST /api/v1/runs/{run_id}/heartbeat HTTP/1.1\r\nHost: x\r\nX-Slow-{i}: {'a' * 200}\r\n".encode(),
                              0.05)
            elif kind == "body":  # full headers, then the body dribbles
                await stream.send(
                    f"POST /api/v1/runs/{run_id}/sensor HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {tok}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{".encode())
                await dribble(b" " * 100, 0.1)
        replies[kind].append(bytes(got))

    beats: list[float] = []

    async def heartbeats() -> None:
        await anyio.sleep(0.3)  # the slow clients are connected
        async with httpx.AsyncClient(base_url=str(env.client.base_url), timeout=10) as c:
            for _ in range(40):
                t = time.perf_counter()
                r = await c.post(f"/api/v1/runs/{run_id}/heartbeat", json={"stage": "Alpha"},
                                 headers={"Authorization": f"Bearer {tok}"})
                beats.append(time.perf_counter() - t)
                assert r.status_code == 200, r.text
                await anyio.sleep(0.02)

    async with anyio.create_task_group() as tg:
        for i in range(50):
            tg.start_soon(slow, "headers", i)
        for i in range(5):
            tg.start_soon(slow, "body", i)
            tg.start_soon(slow, "silent", i)
        tg.start_soon(heartbeats)
    elapsed = time.monotonic() - started
    for kind, got in replies.items():
        assert len(got) == (50 if kind == "headers" else 5)
        for reply in got:  # answered 408 and closed, not left hanging
            assert reply.startswith(b"HTTP/1.1 408 "), (kind, reply[:200])
            assert b"not received within" in reply
    assert elapsed < 8, elapsed
    assert max(beats) < 0.25 and statistics.median(beats) < 0.05, (max(beats), statistics.median(beats))


def _self_signed(tmp_path) -> tuple[str, str]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )
    return str(cert), str(key)


async def test_tls_from_the_config_with_hsts(tmp_path, database_url, test_registry):
    cert, key = _self_signed(tmp_path)
    settings = make_settings(database_url, tmp_path, server={"tls": {"cert": cert, "key": key}})
    app = create_app(settings, registry=test_registry)
    ctx = ssl.create_default_context(cafile=cert)
    async with serve_on_socket(app) as base:
        assert base.startswith("https://")
        async with httpx.AsyncClient(base_url=base, verify=ctx, timeout=10) as client:
            env = Env(app, client, await create_operator_token(app.state.rt))
            r = await client.get("/healthz")
            assert r.status_code == 200 and r.headers["strict-transport-security"] == "max-age=31536000"
            run_id, tok = await env.running()
            hb = await env.agent("POST", f"/api/v1/runs/{run_id}/heartbeat", tok, json={})  # the edge protocol's reply
            assert hb.status_code == 200 and hb.headers["strict-transport-security"] == "max-age=31536000"
        with pytest.raises(httpx.HTTPError):  # plain HTTP to the TLS port gets nothing useful
            async with httpx.AsyncClient(timeout=5) as plain:
                r = await plain.get(base.replace("https://", "http://") + "/healthz")
                assert r.status_code >= 400  # (some servers answer 400 in clear text)
                raise httpx.HTTPError("refused in clear text")


def test_tls_needs_both_files():
    with pytest.raises(ConfigError, match=r"\$.server.tls needs both cert and key"):
        settings_from_dict({"server": {"tls": {"cert": "/x.pem"}}})
