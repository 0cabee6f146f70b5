"""The ``redfish`` boot provider: the DMTF Redfish API of the host's BMC, over HTTPS.

- one-time network boot: ``PATCH`` the ComputerSystem with
  ``Boot.BootSourceOverrideTarget = Pxe`` and ``BootSourceOverrideEnabled = Once``
  (and ``BootSourceOverrideMode`` when ``boot_mode`` is set), then read it back: a BMC
  that answers 204 and ignores the request is caught here, not at the boot timeout;
- power: ``ComputerSystem.Reset`` with ``On`` when the system is off, ``ForceRestart``
  when it is on, ``ForceOff`` after the verdict, each only when the BMC lists it in
  ``ResetType@Redfish.AllowableValues`` (a close alternative otherwise);
- after the verdict: ``BootSourceOverrideEnabled = Disabled`` (target ``None``).

HTTP Basic authentication on every request (no session to leak or expire) through
the shared :class:`~vetting_server.boot.bmc.redfish_client.RedfishClient` (TLS verified by
default, ``ca_file`` for a self-signed BMC certificate). An ``ETag`` from the read is
sent back as ``If-Match`` (some BMCs require it for a PATCH). Errors: no connection
or a timeout → unreachable (retried), 401 → authentication failed, any other 4xx/5xx
→ refused, with the BMC's own Redfish error message.
"""

from __future__ import annotations

from typing import Any, Literal

from vetting_core import BmcRefused, BootProviderSpec, hookimpl

from .redfish_client import RedfishBmcConfig, RedfishClient, redfish_message

__all__ = ["RedfishBoot", "RedfishConfig", "pick_reset", "redfish_message"]


class RedfishConfig(RedfishBmcConfig, kw_only=True, forbid_unknown_fields=True):
    boot_mode: Literal["UEFI", "Legacy"] | None = None  # BootSourceOverrideMode; None: leave it


def pick_reset(allowed: list[str] | None, *preferred: str) -> str:
    """The first of ``preferred`` the BMC allows (all are allowed when it does not say)."""
    if not allowed:
        return preferred[0]
    for kind in preferred:
        if kind in allowed:
            return kind
    raise BmcRefused(f"the BMC allows none of the resets {', '.join(preferred)} (it allows {', '.join(allowed)})")


class RedfishBoot:
    def __init__(self, config: RedfishConfig, http: RedfishClient | None = None) -> None:
        self.c = config
        self.where = config.base_url
        self.http = http or RedfishClient(config)
        self._system: str | None = None

    async def call(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
        """One request, retried with backoff while the BMC does not answer."""
        return await self.http.call(method, path, body, headers)

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

    async def reset(self, doc: dict[str, Any], *preferred: str) -> str:
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
        kind = await self.reset(doc, *(("ForceRestart", "PowerCycle", "GracefulRestart") if was_on else ("On", "ForceOn")))
        return f"Redfish {self.where}: next boot from PXE{note}; {kind} ({'it was on' if was_on else 'it was off'})"

    async def power_off(self, host: Any = None) -> str:
        doc, _ = await self.system()
        if doc.get("PowerState") in ("Off", "PoweringOff"):
            return f"Redfish {self.where}: already off"
        kind = await self.reset(doc, "ForceOff", "GracefulShutdown")
        return f"Redfish {self.where}: {kind}"

    async def clear_boot_override(self, host: Any = None) -> str:
        _, etag = await self.system()
        await self._set_boot({"BootSourceOverrideEnabled": "Disabled", "BootSourceOverrideTarget": "None"}, etag)
        return f"Redfish {self.where}: boot override cleared"


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
