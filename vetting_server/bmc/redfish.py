"""The ``redfish`` boot provider: the DMTF Redfish API of the host's BMC, over HTTPS.

- one-time network boot: ``PATCH`` the ComputerSystem with
  ``Boot.BootSourceOverrideTarget = Pxe`` and ``BootSourceOverrideEnabled = Once``
  (and ``BootSourceOverrideMode`` when ``boot_mode`` is set), then read it back: a BMC
  that answers 204 and ignores the request is caught here, not at the boot timeout;
- power: ``ComputerSystem.Reset`` with ``On`` when the system is off, ``ForceRestart``
  when it is on, ``ForceOff`` after the verdict, each only when the BMC lists it in
  ``ResetType@Redfish.AllowableValues`` (a close alternative otherwise);
- after the verdict: ``BootSourceOverrideEnabled = Disabled`` (target ``None``).

HTTP Basic authentication on every request (no session to leak or expire); TLS is
verified by default — BMCs usually carry self-signed certificates, so ``ca_file``
takes the BMC's certificate or its CA, and ``verify_tls: false`` is an explicit choice
for an isolated network. An ``ETag`` from the read is sent back as ``If-Match`` (some
BMCs require it for a PATCH). Errors: no connection or a timeout → unreachable
(retried), 401 → authentication failed, any other 4xx/5xx → refused, with the BMC's
own Redfish error message.
"""

from __future__ import annotations

import ssl
from typing import Any, Literal
from urllib.parse import urlsplit

import msgspec

from vetting_core import BmcAuthFailed, BmcRefused, BmcUnreachable, BootError, BootProviderSpec, hookimpl
from vetting_core.boot import check_limits, check_secret_reference, read_secret, with_retries


class RedfishConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    address: str  # https://bmc.example.net[:port] (https:// is assumed when left out)
    username: str
    password_env: str | None = None
    password_file: str | None = None
    password: str | None = None  # refused with a message: never stored in boot_config
    system: str | None = None  # "/redfish/v1/Systems/1" or its Id; None: the BMC's only system
    verify_tls: bool = True
    ca_file: str | None = None  # PEM: the BMC's certificate or the CA that signed it
    boot_mode: Literal["UEFI", "Legacy"] | None = None  # BootSourceOverrideMode; None: leave it
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


def pick_reset(allowed: list[str] | None, *preferred: str) -> str:
    """The first of ``preferred`` the BMC allows (all are allowed when it does not say)."""
    if not allowed:
        return preferred[0]
    for kind in preferred:
        if kind in allowed:
            return kind
    raise BmcRefused(f"the BMC allows none of the resets {', '.join(preferred)} (it allows {', '.join(allowed)})")


class RedfishBoot:
    def __init__(self, config: RedfishConfig) -> None:
        self.c = config
        self.where = config.base_url
        self._system: str | None = None

    # ---------------------------------------------------------------- HTTP
    def _client(self) -> Any:
        import httpx  # the server's dependency; imported late so agent-only installs load this module

        verify: ssl.SSLContext | bool = False
        if self.c.verify_tls and self.c.base_url.startswith("https://"):
            verify = ssl.create_default_context(cafile=self.c.ca_file)
        password = read_secret(env=self.c.password_env, file=self.c.password_file, what=f"BMC {self.where}")
        return httpx.AsyncClient(
            base_url=self.c.base_url, auth=(self.c.username, password), verify=verify,
            timeout=self.c.timeout_s, headers={"Accept": "application/json", "OData-Version": "4.0"},
        )

    async def _request(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
        import httpx

        what = f"{method} {path}"
        try:
            async with self._client() as client:
                r = await client.request(method, path, json=body, headers=headers)
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

    async def call(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
        """One request, retried with backoff while the BMC does not answer."""
        return await with_retries(lambda: self._request(method, path, body, headers), attempts=self.c.attempts,
                                  what=f"redfish {self.where}")

    async def system_path(self) -> str:
        if self._system is None:
            s = self.c.system
            if s and s.startswith("/redfish/"):
                self._system = s.rstrip("/")
            elif s:
                self._system = f"/redfish/v1/Systems/{s}"
            else:
                members = (await self.call("GET", "/redfish/v1/Systems")).json().get("Members") or []
                if len(members) != 1:
                    raise BmcRefused(
                        f"BMC {self.where} has {len(members)} systems; set system to one of "
                        + ", ".join(str(m.get("@odata.id")) for m in members)
                    )
                self._system = str(members[0]["@odata.id"]).rstrip("/")
        return self._system

    async def system(self) -> tuple[dict[str, Any], str | None]:
        r = await self.call("GET", await self.system_path())
        return r.json(), r.headers.get("ETag")

    # ---------------------------------------------------------------- provider
    async def power_state(self, host: Any = None) -> str:
        doc, _ = await self.system()
        state = str(doc.get("PowerState") or "")
        if state in ("On", "PoweringOn", "Paused"):
            return "on"
        if state in ("Off", "PoweringOff"):
            return "off"
        raise BmcRefused(f"BMC {self.where}: unexpected PowerState {state!r}")

    async def _set_boot(self, boot: dict[str, str], etag: str | None) -> dict[str, Any]:
        path = await self.system_path()
        await self.call("PATCH", path, {"Boot": boot}, {"If-Match": etag} if etag else None)
        doc, _ = await self.system()
        return doc.get("Boot") or {}

    async def _reset(self, doc: dict[str, Any], *preferred: str) -> str:
        action = (doc.get("Actions") or {}).get("#ComputerSystem.Reset") or {}
        target = action.get("target") or f"{await self.system_path()}/Actions/ComputerSystem.Reset"
        kind = pick_reset(action.get("ResetType@Redfish.AllowableValues"), *preferred)
        await self.call("POST", target, {"ResetType": kind})
        return kind

    async def power_on(self, host: Any = None, *, boot_target: str = "pxe") -> str:
        if boot_target != "pxe":
            raise BmcRefused(f"the redfish provider boots from the network only, not {boot_target!r}")
        doc, etag = await self.system()
        boot = {"BootSourceOverrideTarget": "Pxe", "BootSourceOverrideEnabled": "Once"}
        if self.c.boot_mode:
            boot["BootSourceOverrideMode"] = self.c.boot_mode
        now = await self._set_boot(boot, etag)
        if now.get("BootSourceOverrideTarget") != "Pxe":
            raise BmcRefused(f"BMC {self.where} accepted the PXE boot override but reports "
                             f"BootSourceOverrideTarget {now.get('BootSourceOverrideTarget')!r}")
        enabled = now.get("BootSourceOverrideEnabled")
        note = "" if enabled in (None, "Once") else f" (the BMC reports {enabled}; cleared after the verdict)"
        was_on = str(doc.get("PowerState")) in ("On", "PoweringOn", "Paused")
        kind = await self._reset(doc, *(("ForceRestart", "PowerCycle", "GracefulRestart") if was_on else ("On", "ForceOn")))
        return f"Redfish {self.where}: next boot from PXE{note}; {kind} ({'it was on' if was_on else 'it was off'})"

    async def power_off(self, host: Any = None) -> str:
        doc, _ = await self.system()
        if doc.get("PowerState") in ("Off", "PoweringOff"):
            return f"Redfish {self.where}: already off"
        kind = await self._reset(doc, "ForceOff", "GracefulShutdown")
        return f"Redfish {self.where}: {kind}"

    async def clear_boot_override(self, host: Any = None) -> str:
        _, etag = await self.system()
        await self._set_boot({"BootSourceOverrideEnabled": "Disabled", "BootSourceOverrideTarget": "None"}, etag)
        return f"Redfish {self.where}: boot override cleared"


def _root(exc: BaseException) -> BaseException | None:
    """The innermost cause (httpx wraps the ssl / socket error)."""
    seen = exc
    while seen.__cause__ is not None or seen.__context__ is not None:
        seen = seen.__cause__ or seen.__context__  # type: ignore[assignment]
    return None if seen is exc else seen


@hookimpl
def vetting_boot_providers():
    return [
        BootProviderSpec(
            kind="redfish",
            factory=RedfishBoot,
            config_type=RedfishConfig,
            description="Redfish (HTTPS) to the BMC: one-time PXE boot, ComputerSystem.Reset",
        )
    ]
