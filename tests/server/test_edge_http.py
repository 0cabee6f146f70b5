"""EdgeProtocol on a real loopback socket: the HTTP/1.1 connection handling around the
hot routes (pipelining, keep-alive, ``Connection: close``, HTTP/1.0, an oversized body,
a client that leaves mid-batch), both engines."""

from __future__ import annotations

import json

import anyio
import pytest

from .conftest import msgspec, sample

pytestmark = pytest.mark.anyio

TS = "2026-11-23T01:00:00Z"


def _request(path: str, token: str, body: bytes, *, version: str = "1.1", extra: str = "") -> bytes:
    return (
        f"POST {path} HTTP/{version}\r\nHost: t\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


async def _responses(stream, n: int) -> list[tuple[int, dict[str, str], bytes]]:
    """Read ``n`` responses (each with a content-length) off ``stream``."""
    buf, out = b"", []
    with anyio.fail_after(15):
        while len(out) < n:
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                head = buf[:end].decode("latin-1").split("\r\n")
                headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in head[1:])}
                size = int(headers["content-length"])
                if len(buf) >= end + 4 + size:
                    out.append((int(head[0].split()[1]), headers, buf[end + 4 : end + 4 + size]))
                    buf = buf[end + 4 + size :]
                    continue
            buf += await stream.receive()
    assert buf == b"", buf
    return out


async def _closed(stream) -> bool:
    with anyio.fail_after(5):
        try:
            return await stream.receive() == b""
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            return True


async def test_pipelined_keepalive_close_and_http10_on_the_edge_protocol(socket_env):
    env = socket_env
    run_id, tok = await env.running()
    port = int(str(env.client.base_url).rsplit(":", 1)[1])
    hb = f"/api/v1/runs/{run_id}/heartbeat"
    sensor = f"/api/v1/runs/{run_id}/sensor"

    def batch(seq: int, n: int = 3) -> bytes:
        return msgspec.json.encode({"seq": seq, "samples": [sample(TS, "Alpha", "temp", f"cpu/{i}", 40.0 + i) for i in range(n)]})

    async with await anyio.connect_tcp("127.0.0.1", port) as s:
        # three requests in one write: a heartbeat, a sensor batch (which waits for its
        # commit) and a heartbeat pipelined behind it are answered in order
        await s.send(_request(hb, tok, b'{"progress": 0.5}') + _request(sensor, tok, batch(1)) + _request(hb, tok, b"{}"))
        (st1, h1, b1), (st2, _, b2), (st3, _, b3) = await _responses(s, 3)
        assert (st1, st2, st3) == (200, 200, 200), (b1, b2, b3)
        assert json.loads(b1)["cmd"] == "continue" and h1["content-type"] == "application/json"
        assert "date" in h1 and "server" in h1
        assert json.loads(b2) == {"seq": 1, "stored": 3, "duplicate": False, "breaches": 0}
        assert json.loads(b3)["state"] == "Running"
        # an oversized body is refused as soon as it is known to be (by its declared length,
        # before the body; or once too much has arrived) and the connection stays usable
        big = b'{"message": "' + b"x" * (2 << 20) + b'"}'
        head, rest = _request(hb, tok, big)[:-len(big)], big
        await s.send(head + rest[:1000])
        [(st, _, body)] = await _responses(s, 1)
        assert st == 413 and "too large" in json.loads(body)["detail"]
        await s.send(rest[1000:] + _request(hb, tok, b"{}"))
        [(st, _, _)] = await _responses(s, 1)
        assert st == 200
        chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(big), big)
        await s.send(_request(hb, tok, b"").replace(b"Content-Length: 0", b"Transfer-Encoding: chunked") + chunked)
        [(st, _, body)] = await _responses(s, 1)
        assert st == 413 and "too large" in json.loads(body)["detail"]
        # a retried batch is stored once, on the same connection
        await s.send(_request(sensor, tok, batch(1)))
        [(st, _, body)] = await _responses(s, 1)
        assert st == 200 and json.loads(body)["duplicate"] is True
        # a malformed body, then a missing token: 400, then 401 with its challenge
        await s.send(_request(sensor, tok, b"{nope") + _request(hb, "", b"{}").replace(b"Authorization: Bearer \r\n", b""))
        (st1, _, b1), (st2, h2, b2) = await _responses(s, 2)
        assert st1 == 400 and json.loads(b1)["detail"].startswith("malformed JSON")
        assert st2 == 401 and h2["www-authenticate"] == "Bearer" and "missing run token" in json.loads(b2)["detail"]
        # Connection: close is honoured after the reply
        await s.send(_request(hb, tok, b"{}", extra="Connection: close\r\n"))
        [(st, h, _)] = await _responses(s, 1)
        assert st == 200 and h.get("connection") == "close"
        assert await _closed(s)

    async with await anyio.connect_tcp("127.0.0.1", port) as s:  # HTTP/1.0: answered, then closed
        await s.send(_request(hb, tok, b"{}", version="1.0"))
        [(st, _, body)] = await _responses(s, 1)
        assert st == 200 and json.loads(body)["cmd"] == "continue"
        assert await _closed(s)

    # a client that leaves while its batch is being stored: the batch is stored once, and
    # the server goes on answering
    async with await anyio.connect_tcp("127.0.0.1", port) as s:
        await s.send(_request(sensor, tok, batch(2, 500)))
    with anyio.fail_after(10):
        while (await env.detail(run_id))["measurement_count"] < 503:
            await anyio.sleep(0.05)
    r = await env.agent("POST", sensor, tok, content=batch(2, 500))
    assert r.status_code == 200 and r.json()["duplicate"] is True
    assert (await env.detail(run_id))["measurement_count"] == 503
