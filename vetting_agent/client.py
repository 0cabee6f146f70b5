"""HTTP client for the agent routes of the orchestrator (:mod:`vetting_core.protocol`).

Every failure is classified once, here, so the callers only decide *whether* to
retry:

- :class:`Unreachable` — connection refused/reset, timeout, 408, 429, 5xx: the
  orchestrator may come back; retry with backoff.
- :class:`AuthRejected` — 401/403: the token is wrong, foreign or dead (the run
  ended). Retrying cannot help; stop and say so.
- :class:`Rejected` — any other 4xx (400, 404, 409, 413, 422): this request will
  never be accepted as it is; log it, surface it, do not retry.

One exception: a 409 whose message ends in "retry" is the orchestrator saying the run
changed under a concurrent request (compare-and-set lost a race) — transient.
"""

from __future__ import annotations

from typing import Any, TypeVar

import httpx
import msgspec

from vetting_core.protocol import (
    BatchAck,
    Claim,
    ClaimReply,
    Heartbeat,
    HeartbeatReply,
    Hello,
    HelloReply,
    HoldReply,
    HoldRequest,
    HostHeartbeat,
    HostHeartbeatReply,
    PeerRelease,
    PeerReleaseReply,
    PeerReply,
    PeerRequest,
    ResultReply,
)

T = TypeVar("T")
_enc = msgspec.json.Encoder()


class ClientError(Exception):
    def __init__(self, message: str, status: int | None = None, detail: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail


class Unreachable(ClientError):
    """Transient: retry later."""


class AuthRejected(ClientError):
    """401/403: the token is not (or no longer) valid for this run."""


class Rejected(ClientError):
    """A permanent 4xx answer other than 401/403 (409 conflict, 413, 422...)."""


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    if isinstance(body, dict) and "detail" in body:
        return str(body["detail"])[:500]
    return str(body)[:500]


class AgentClient:
    """One orchestrator, one bearer token (a run's token, or a host token in host mode)."""

    def __init__(
        self,
        server: str,
        token: str,
        *,
        run_id: int | None = None,
        timeout: float = 15.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.server = server.rstrip("/")
        self.run_id = run_id
        self._http = httpx.AsyncClient(
            base_url=self.server,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            transport=transport,
            follow_redirects=False,
        )

    async def __aenter__(self) -> AgentClient:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    def run_path(self, route: str) -> str:
        if self.run_id is None:
            raise RuntimeError("this client has no run id")
        return f"/api/v1/runs/{self.run_id}/{route}"

    async def post_raw(self, path: str, body: bytes) -> bytes:
        """POST an encoded body; return the response body of a 2xx, else raise."""
        try:
            response = await self._http.post(path, content=body)
        except (httpx.TransportError, httpx.TimeoutException) as exc:
            raise Unreachable(f"POST {path}: {type(exc).__name__}: {exc}".rstrip(": ")) from None
        status = response.status_code
        if 200 <= status < 300:
            return response.content
        detail = _detail(response)
        message = f"POST {path}: HTTP {status}: {detail}"
        if status in (401, 403):
            raise AuthRejected(message, status, detail)
        if status in (408, 425, 429) or status >= 500:
            raise Unreachable(message, status, detail)
        if status == 409 and detail.rstrip(" .").lower().endswith("retry"):
            raise Unreachable(message, status, detail)
        raise Rejected(message, status, detail)

    async def post(self, path: str, request: msgspec.Struct, reply_type: type[T]) -> T:
        content = await self.post_raw(path, _enc.encode(request))
        try:
            return msgspec.json.decode(content, type=reply_type)
        except msgspec.DecodeError as exc:
            # a proxy's error page or a server from another version: not our protocol
            raise Unreachable(f"POST {path}: unreadable reply: {exc}") from None

    # -- typed routes ---------------------------------------------------------------
    async def hello(self, body: Hello) -> HelloReply:
        return await self.post(self.run_path("hello"), body, HelloReply)

    async def claim(self, body: Claim) -> ClaimReply:
        return await self.post(self.run_path("claim"), body, ClaimReply)

    async def heartbeat(self, body: Heartbeat) -> HeartbeatReply:
        return await self.post(self.run_path("heartbeat"), body, HeartbeatReply)

    async def hold(self, body: HoldRequest) -> HoldReply:
        return await self.post(self.run_path("hold"), body, HoldReply)

    async def peer(self, body: PeerRequest) -> PeerReply:
        return await self.post(self.run_path("peer"), body, PeerReply)

    async def release_peer(self, body: PeerRelease) -> PeerReleaseReply:
        return await self.post(self.run_path("peer/release"), body, PeerReleaseReply)

    async def host_heartbeat(self, body: HostHeartbeat) -> HostHeartbeatReply:
        return await self.post("/api/v1/agents/heartbeat", body, HostHeartbeatReply)


def decode_ack(body: bytes) -> BatchAck:
    return msgspec.json.decode(body, type=BatchAck)


def decode_result_reply(body: bytes) -> ResultReply:
    return msgspec.json.decode(body, type=ResultReply)
