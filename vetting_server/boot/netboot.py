"""``GET /ipxe/{mac}``: the per-MAC iPXE script, and the run token it carries.

The script boots the live image with the run's coordinates on the kernel command
line (``vetting.server=… vetting.run=… vetting.token=…``, read by
:mod:`vetting_agent.cmdline`). One script serves BIOS and UEFI: the initrd is fetched
under the name ``initrd.img`` and the kernel line says ``initrd=initrd.img`` — under
UEFI the kernel's EFI stub loads the initrd *by that name* from the files iPXE
offers (older iPXE builds, Debian's included, offer no other way); under BIOS the
name is harmless. Kernel and initrd come from the server itself (``/pxe/vmlinuz``,
``/pxe/initrd.img``, :mod:`..pxe.bootfiles`) or from ``pxe.kernel_url``/``initrd_url``.

**The token is handed out once, inside the boot window** (docs/pxe.md, "Security"):
only while the run waits for its host to boot (``WaitingBoot``/``Booting``, no hello
yet), only before ``runs.boot_window_until`` (opened by the server when it powers
the host on, for ``boot.window_s``), and only to the first request in that window —
one compare-and-set marks it served. A MAC is not a secret; this bounds what knowing
one gives: a party that asks first gets a token the real host then cannot get (its
boot fails loudly, the run times out), and nobody can ask outside the window.
Refusals for a registered MAC are audited with the source address (at most one event
per host and reason a minute, so the unauthenticated route cannot fill the events
table); requests for unknown MACs are only logged.
"""

from __future__ import annotations

import time
from typing import Any

import structlog

from vetting_core.protocol import KERNEL_PARAM_RUN, KERNEL_PARAM_SERVER, KERNEL_PARAM_TOKEN

from ..db.database import utcnow
from ..errors import ApiError, conflict, forbidden, not_found
from ..hosts.rules import FieldError, normalize_mac
from ..runtime import Runtime
from ..runs.tokens import issue_run_token

log = structlog.get_logger()

KERNEL_PATH = "/pxe/vmlinuz"
INITRD_PATH = "/pxe/initrd.img"
INITRD_NAME = "initrd.img"
AUDIT_EVERY_S = 60.0


def boot_urls(settings: Any, public_url: str) -> tuple[str, str]:
    """(kernel URL, initrd URL): configured URLs, else this server's own routes."""
    p = settings.pxe
    kernel = p.kernel_url or (f"{public_url}{KERNEL_PATH}" if p.kernel_path else "")
    initrd = p.initrd_url or (f"{public_url}{INITRD_PATH}" if p.initrd_path else "")
    if not kernel or not initrd:
        raise ApiError(503, "this server has no live image to boot: set pxe.kernel_path and pxe.initrd_path "
                            "(or pxe.kernel_url and pxe.initrd_url) in its configuration")
    return kernel, initrd


def ipxe_script(*, run_id: int, host_name: str, kernel_url: str, initrd_url: str, cmdline: str) -> str:
    """The iPXE script (pure). ``cmdline`` holds everything after ``initrd=…``."""
    return (
        "#!ipxe\n"
        f"echo Vetting run {run_id} for {host_name} (${{platform}})\n"
        f"kernel {kernel_url} initrd={INITRD_NAME} {cmdline} || goto failed\n"
        f"initrd --name {INITRD_NAME} {initrd_url} || goto failed\n"
        "boot || goto failed\n"
        ":failed\n"
        f"echo Vetting: the live image of run {run_id} did not boot; the server's log says more\n"
        "sleep 10\n"
        "exit 1\n"
    )


class NetBoot:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self._audited: dict[tuple[int, str], float] = {}

    async def ipxe(self, mac_text: str, peer: str | None) -> str:
        rt = self.rt
        try:
            mac = normalize_mac(mac_text)
        except FieldError as exc:
            raise ApiError(422, str(exc), {"field": "mac"}) from None
        host = await rt.db.fetchrow("SELECT id, name FROM hosts WHERE mac = $1", mac)
        if host is None:
            log.info("ipxe.unknown_mac", mac=mac, peer=peer)
            raise not_found(f"no host is registered with MAC {mac}")
        host_id = int(host["id"])
        run = await rt.db.fetchrow(
            "SELECT id FROM runs WHERE host_id = $1 AND state IN ('Queued', 'WaitingBoot', 'Booting') "
            "AND hello_at IS NULL ORDER BY id LIMIT 1",
            host_id,
        )
        if run is None:
            raise await self._refuse(host_id, None, mac, peer, "no_run", not_found(
                f"no run of host {host['name']} is waiting to boot (start one: vetting run start {host['name']})"))
        run_id = int(run["id"])
        kernel_url, initrd_url = boot_urls(rt.settings, rt.public_url)  # before the token: a 503 burns nothing
        now = utcnow()
        token, digest = issue_run_token()
        async with rt.unit() as u:
            n = await u.tx.execute(
                "UPDATE runs SET agent_token_hash = $2, ipxe_served_at = $3, ipxe_served_to = $4, "
                "version = version + 1, changed_at = $5 WHERE id = $1 AND state IN ('WaitingBoot', 'Booting') "
                "AND hello_at IS NULL AND ipxe_served_at IS NULL AND boot_window_until > $3",
                run_id, digest, now, (peer or "")[:100] or None, rt.changed_now(),
            )
            if n == 1:
                u.fx.runs.add(run_id)
                await u.event("boot", f"iPXE script with the run token served to {mac} (from {peer or 'unknown'})",
                              run_id=run_id, host_id=host_id, data={"mac": mac, "peer": peer})
        if n != 1:
            raise await self._refuse(host_id, run_id, mac, peer, *await self._why(run_id, host["name"]))
        p = rt.settings.pxe
        params = f"{KERNEL_PARAM_SERVER}={rt.public_url} {KERNEL_PARAM_RUN}={run_id} {KERNEL_PARAM_TOKEN}={token}"
        return ipxe_script(run_id=run_id, host_name=host["name"], kernel_url=kernel_url, initrd_url=initrd_url,
                           cmdline=" ".join(x for x in (p.cmdline_extra.strip(), params) if x))

    async def _why(self, run_id: int, host_name: str) -> tuple[str, ApiError]:
        run = await self.rt.db.fetchrow(
            "SELECT state, hello_at, boot_window_until, ipxe_served_at, ipxe_served_to FROM runs WHERE id = $1", run_id)
        if run is not None and run["ipxe_served_at"] is not None and run["hello_at"] is None:
            return "served", conflict(
                f"the run token of run {run_id} was already handed out in this boot window (to "
                f"{run['ipxe_served_to'] or 'an unknown address'}); it is handed out once: cancel the run and "
                f"start a new one to boot {host_name} again")
        if run is None or run["state"] not in ("Queued", "WaitingBoot", "Booting") or run["hello_at"] is not None:
            return "no_run", not_found(f"no run of host {host_name} is waiting to boot")
        return "closed", forbidden(
            f"the boot window of run {run_id} is closed: it opens when the server powers {host_name} on and "
            f"lasts boot.window_s ({self.rt.settings.boot.window_s:.0f}s)")

    async def _refuse(self, host_id: int, run_id: int | None, mac: str, peer: str | None, reason: str,
                      error: ApiError) -> ApiError:
        """Audit the refusal (throttled) and return the error to raise."""
        log.warning("ipxe.refused", mac=mac, peer=peer, run_id=run_id, reason=reason)
        key, now = (host_id, reason), time.monotonic()
        if now - self._audited.get(key, -AUDIT_EVERY_S) >= AUDIT_EVERY_S:
            if len(self._audited) > 10000:
                self._audited.clear()
            self._audited[key] = now
            async with self.rt.unit() as u:
                await u.event("audit.ipxe_refused", f"iPXE script for {mac} refused to {peer or 'unknown'}: "
                              f"{error.detail}", run_id=run_id, host_id=host_id, level="warning",
                              data={"mac": mac, "peer": peer, "reason": reason, "status": error.status_code})
        return error
