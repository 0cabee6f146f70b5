"""The Redfish HTTP client both Redfish plugins share (boot provider, firmware provider).

TLS is verified by default — BMCs usually carry self-signed certificates, so
``ca_file`` takes the BMC's certificate or its CA, and ``verify_tls: false`` is an
explicit choice for an isolated network. The password is read from its reference
(``password_env``/``password_file``) when a request needs it and is never logged.

Two ways to authenticate:

- **Basic** on every request, one short connection each (outside ``async with``):
  nothing to leak or expire, right for the boot provider's few calls;
- **a Redfish session** inside ``async with client:`` when ``sessions=True``: one
  ``POST SessionService/Sessions`` (the password crosses the wire once), the
  ``X-Auth-Token`` on every later request over one kept-alive connection, a new
  session when the BMC answers 401 (it expired), and ``DELETE`` of the session on
  exit — BMCs allow few sessions, and a leaked one locks the next update out. A BMC
  without a SessionService gets Basic over the kept-alive connection.

Errors: no connection or a timeout → :class:`BmcUnreachable` (retried with backoff,
``attempts`` times), 401 → :class:`BmcAuthFailed`, any other 4xx/5xx →
:class:`BmcRefused` with the BMC's own Redfish error message.
"""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import urlsplit

import msgspec
import structlog

from vetting_core import BmcAuthFailed, BmcRefused, BmcUnreachable, BootError
from vetting_core.boot import check_limits, check_secret_reference, read_secret, with_retries

log = structlog.get_logger()


class RedfishBmcConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """How to reach one BMC; each plugin's config adds its own fields."""

    address: str  # https://bmc.example.net[:port] (https:// is assumed when left out)
    username: str
    password_env: str | None = None
    password_file: str | None = None
    password: str | None = None  # refused with a message: never stored in a host's config
    system: str | None = None  # "/redfish/v1/Systems/1" or its Id; None: the BMC's only system
    verify_tls: bool = True
    ca_file: str | None = None  # PEM: the BMC's certificate or the CA that signed it
    timeout_s: float = 20.0  # one HTTP request
    attempts: int = 3  # tries for a BMC that does not answer (1 s, 2 s, 4 s… apart)

    def __post_init__(self) -> None:
        check_secret_reference(self.password_env, self.password_file, self.password)
        url = urlsplit(self.base_url)
        if url.scheme not in ("https", "http") or not url.hostname or url.path not in ("", "/") or url.query:
            raise msgspec.ValidationError(f"address {self.address!r} is not a BMC address like https://10.0.0.7 - at `$.address`")
        check_limits(self.attempts, self.timeout_s)

    @property
    def base_url(self) -> str:
        return (self.address if "://" in self.address else f"https://{self.address}").rstrip("/")


def redfish_message(body: Any) -> str:
    """The human part of a Redfish error body (``error.message`` and the first
    ``@Message.ExtendedInfo`` message), or '' (pure)."""
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        return ""
    parts = [str(err.get("message") or "")]
    for info in err.get("@Message.ExtendedInfo") or []:
        if isinstance(info, dict) and info.get("Message"):
            parts.append(str(info["Message"]))
            break
    return "; ".join(p for p in parts if p)


class RedfishClient:
    def __init__(self, config: RedfishBmcConfig, *, sessions: bool = False) -> None:
        self.c = config
        self.where = config.base_url
        self.sessions = sessions
        self._http: Any = None  # the kept-alive client inside ``async with``
        self._token: str | None = None
        self._session_uri: str | None = None
        self.session_count = 0  # sessions opened (a BMC allows few: each one is closed)

    def _client(self, *, basic: bool) -> Any:
        import httpx  # the server's dependency; imported late so agent-only installs load the plugins

        verify: ssl.SSLContext | bool = False
        if self.c.verify_tls and self.c.base_url.startswith("https://"):
            verify = ssl.create_default_context(cafile=self.c.ca_file)
        auth = (self.c.username, self._password()) if basic else None
        return httpx.AsyncClient(
            base_url=self.c.base_url, auth=auth, verify=verify, timeout=self.c.timeout_s,
            headers={"Accept": "application/json", "OData-Version": "4.0"},
        )

    def _password(self) -> str:
        return read_secret(env=self.c.password_env, file=self.c.password_file, what=f"BMC {self.where}")

    # ------------------------------------------------------------ session lifetime
    async def __aenter__(self) -> RedfishClient:
        self._http = self._client(basic=not self.sessions)
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self._logout()
        finally:
            http, self._http = self._http, None
            await http.aclose()

    async def _login(self) -> None:
        """Open a session (``X-Auth-Token``); a BMC without a SessionService gets Basic."""
        root = (await self._send("GET", "/redfish/v1/")).json()
        sessions = ((root.get("Links") or {}).get("Sessions") or {}).get("@odata.id")
        if not sessions:
            log.info("redfish.no_sessions", bmc=self.where)
            self._http.auth = (self.c.username, self._password())
            self.sessions = False
            return
        r = await self._send("POST", sessions, {"UserName": self.c.username, "Password": self._password()})
        token = r.headers.get("X-Auth-Token")
        if not token:
            raise BmcRefused(f"BMC {self.where} opened a session without an X-Auth-Token header")
        self._token = token
        self._session_uri = r.headers.get("Location") or (r.json() or {}).get("@odata.id")
        self._http.headers["X-Auth-Token"] = token
        self.session_count += 1
        log.info("redfish.session_opened", bmc=self.where, session=self._session_uri)

    async def _logout(self) -> None:
        if self._token is None:
            return
        uri, self._session_uri, self._token = self._session_uri, None, None
        try:
            if uri:
                await self._send("DELETE", urlsplit(uri).path or uri)
                log.info("redfish.session_closed", bmc=self.where, session=uri)
        except BootError as exc:  # the BMC went away: its session expires on its own
            log.warning("redfish.session_close_failed", bmc=self.where, error=str(exc))
        finally:
            self._http.headers.pop("X-Auth-Token", None)

    # ------------------------------------------------------------------ requests
    async def _send(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
                    **kw: Any) -> Any:
        import httpx

        what = f"{method} {path}"
        try:
            if self._http is not None:
                r = await self._http.request(method, path, json=body, headers=headers, **kw)
            else:
                async with self._client(basic=True) as client:
                    r = await client.request(method, path, json=body, headers=headers, **kw)
        except httpx.TimeoutException:
            raise BmcUnreachable(f"BMC {self.where} unreachable: no answer to {what} within {self.c.timeout_s:.0f}s") from None
        except httpx.TransportError as exc:
            cause = _root(exc)
            if isinstance(cause, ssl.SSLCertVerificationError):
                raise BootError(
                    f"BMC {self.where}: its TLS certificate is not trusted ({cause.verify_message}); set ca_file to "
                    "the BMC's certificate or CA (or verify_tls: false on an isolated network)"
                ) from None
            raise BmcUnreachable(f"BMC {self.where} unreachable: {what}: {cause or exc}") from None
        if r.status_code == 401:
            raise BmcAuthFailed(f"BMC {self.where} authentication failed: user {self.c.username!r} was refused (401)")
        if r.status_code >= 400:
            try:
                detail = redfish_message(r.json())
            except ValueError:
                detail = r.text.strip()[:200]
            transient = r.status_code in (502, 503, 504)
            raise BmcRefused(f"BMC {self.where} refused {what} ({r.status_code}): {detail or r.reason_phrase}",
                             transient=transient)
        return r

    async def request(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
                      **kw: Any) -> Any:
        """One request, no retry (a push that must reopen its file retries itself)."""
        if self._http is not None and self.sessions and self._token is None:
            await self._login()
        try:
            return await self._send(method, path, body, headers, **kw)
        except BmcAuthFailed:
            if self._token is None:
                raise
            # the session expired (or the BMC restarted): one new session, then the request again
            self._token = self._session_uri = None
            self._http.headers.pop("X-Auth-Token", None)
            await self._login()
            return await self._send(method, path, body, headers, **kw)

    async def call(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
                   **kw: Any) -> Any:
        """One request (an ``httpx.Response``), retried with backoff while the BMC does
        not answer. ``kw`` goes to httpx (``files=``, ``data=`` for a multipart push)."""
        return await with_retries(lambda: self.request(method, path, body, headers, **kw), attempts=self.c.attempts,
                                  what=f"redfish {self.where}")

    async def get(self, path: str) -> dict[str, Any]:
        return (await self.call("GET", path)).json()


def _root(exc: BaseException) -> BaseException | None:
    """The innermost cause (httpx wraps the ssl / socket error)."""
    seen = exc
    while seen.__cause__ is not None or seen.__context__ is not None:
        seen = seen.__cause__ or seen.__context__  # type: ignore[assignment]
    return None if seen is exc else seen
