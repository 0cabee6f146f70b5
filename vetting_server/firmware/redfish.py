"""The ``redfish`` firmware-update provider: DMTF Redfish UpdateService through the BMC.

- **inventory**: ``UpdateService.FirmwareInventory``, every member read (``Id``,
  ``Name``, ``Version``, ``Updateable``); each is given a spec component (``bios``,
  ``bmc``, ``nic``...) by :func:`component_of` — words in its Id and Name, or the
  config's ``components`` globs first, since vendors name things their own way;
- **install**: ``POST`` the image to ``MultipartHttpPushUri`` (the file travels over
  the connection the orchestrator already has to the BMC, so the BMC needs no route
  back) when the BMC offers it, else ``UpdateService.SimpleUpdate`` with ``ImageURI``:
  the BMC downloads the image from the orchestrator, which serves it over HTTP only
  for this update. ``transfer`` forces one. ``Targets`` name the inventory members
  the image applies to. The answer's task (``Location`` or the Task body) is followed
  (``TaskState``, ``PercentComplete``, ``Messages``) until it ends or
  ``task_timeout_s`` passes; ``Exception``/``Killed``/``Cancelled`` fail the update
  with the BMC's last message. A ``ResetRequired`` (or ``AwaitToActivate``) message
  means the image is active only after a reset;
- **reboot**: ``ComputerSystem.Reset`` (``ForceRestart`` when on, ``On`` when off,
  from the BMC's allowed values) and wait until the system reports ``On``;
- one Redfish session for the whole update (``SessionService``), closed at the end.

Built on :mod:`vetting_server.boot.bmc.redfish_client` (TLS verified, credentials by
reference, never logged) and the boot provider's reset logic.
"""

from __future__ import annotations

import time
from fnmatch import fnmatch
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import anyio
import msgspec
import structlog

from vetting_core import BmcRefused, BmcUnreachable, FirmwareProviderSpec, hookimpl
from vetting_core.boot import with_retries
from vetting_core.firmware import FirmwareImage, FirmwareItem, FirmwareUpdateError, InstallOutcome, Progress, image_items

from ..boot.bmc.redfish import RedfishBoot
from ..boot.bmc.redfish_client import RedfishBmcConfig, RedfishClient

log = structlog.get_logger()

FAILED_TASK = ("Exception", "Killed", "Cancelled", "Interrupted")
WAITING_TASK = ("New", "Pending", "Starting", "Service")
# first match wins, over "<Id> <Name>" in lower case; BMC words before "controller"
_COMPONENT_WORDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("bios", ("bios", "uefi", "system rom")),
    ("bmc", ("bmc", "idrac", "ilo", "xcc", "remote access controller", "manager")),
    ("cpld", ("cpld",)),
    ("nvme_fw", ("nvme",)),
    ("hba", ("raid", "perc", "hba", "storage controller", "sas controller")),
    ("nic", ("nic", "network", "ethernet", "lom", "connectx")),
    ("disk_fw", ("disk", "drive", "ssd", "hdd")),
    ("gpu_vbios", ("gpu", "vbios")),
    ("psu", ("psu", "power supply")),
)


class RedfishFirmwareConfig(RedfishBmcConfig, kw_only=True, forbid_unknown_fields=True):
    transfer: Literal["auto", "multipart", "simple"] = "auto"  # auto: multipart push when offered
    task_timeout_s: float = 3600.0  # an update task running longer fails
    poll_interval_s: float = 5.0  # how often the task and the power state are read
    reboot_timeout_s: float = 1200.0  # a reset host must report On again within this
    components: dict[str, str] = {}  # inventory Id/Name glob -> component, before the built-in words

    def __post_init__(self) -> None:
        super().__post_init__()
        for name, low, high in (("task_timeout_s", 1, 86400), ("poll_interval_s", 0.05, 300), ("reboot_timeout_s", 1, 7200)):
            if not low <= getattr(self, name) <= high:
                raise msgspec.ValidationError(f"{name} must be between {low} and {high} - at `$.{name}`")


def component_of(item_id: str, name: str, overrides: dict[str, str] | None = None) -> str:
    """The spec component of a FirmwareInventory member (pure)."""
    for pattern, component in (overrides or {}).items():
        if fnmatch(item_id.lower(), pattern.lower()) or fnmatch(name.lower(), pattern.lower()):
            return component
    text = f"{item_id} {name}".lower().replace("_", " ").replace("-", " ")
    for component, words in _COMPONENT_WORDS:
        if any(w in text for w in words):
            return component
    return "other"


def task_uri(response: Any) -> str | None:
    """Where to follow an update request (pure over the response): the ``Location``
    header (a task or task monitor), else the Task in the body; None when the BMC
    finished synchronously."""
    location = response.headers.get("Location")
    if location:
        return urlsplit(location).path or location
    try:
        body = response.json()
    except ValueError:
        return None
    if isinstance(body, dict) and "TaskState" in body and body.get("@odata.id"):
        return str(body["@odata.id"])
    return None


def task_messages(doc: dict[str, Any]) -> list[tuple[str, str]]:
    return [(str(m.get("MessageId") or ""), str(m.get("Message") or "")) for m in doc.get("Messages") or []
            if isinstance(m, dict)]


def needs_reset(doc: dict[str, Any]) -> bool:
    """A finished task that says the image becomes active only after a reset (pure)."""
    return any(mid.endswith((".ResetRequired", ".AwaitToActivate")) or "ResetRequired" in mid
               for mid, _ in task_messages(doc))


class RedfishFirmware:
    def __init__(self, config: RedfishFirmwareConfig) -> None:
        self.c = config
        self.where = config.base_url
        self.http = RedfishClient(config, sessions=True)
        self.boot = RedfishBoot(config, http=self.http)  # type: ignore[arg-type]  # system + reset logic
        self._open = False
        self._uris: dict[str, str] = {}

    async def _session(self) -> RedfishClient:
        if not self._open:
            await self.http.__aenter__()
            self._open = True
        return self.http

    async def close(self) -> None:
        if self._open:
            self._open = False
            await self.http.__aexit__(None, None, None)

    async def _service(self) -> dict[str, Any]:
        return await (await self._session()).get("/redfish/v1/UpdateService")

    # ------------------------------------------------------------------ inventory
    async def inventory(self) -> list[FirmwareItem]:
        http = await self._session()
        col = ((await self._service()).get("FirmwareInventory") or {}).get("@odata.id")
        if not col:
            raise BmcRefused(f"BMC {self.where} has no UpdateService.FirmwareInventory")
        items = []
        for member in (await http.get(col)).get("Members") or []:
            uri = str(member.get("@odata.id") or "")
            doc = await http.get(uri)
            item_id = str(doc.get("Id") or uri.rstrip("/").rsplit("/", 1)[-1])
            name = str(doc.get("Name") or item_id)
            self._uris[item_id] = uri
            items.append(FirmwareItem(id=item_id, name=name, version=str(doc.get("Version") or ""),
                                      component=component_of(item_id, name, self.c.components),
                                      updateable=doc.get("Updateable") is not False))
        return items

    # ------------------------------------------------------------------ install
    async def install(self, image: FirmwareImage, progress: Progress) -> InstallOutcome:
        service = await self._service()
        items = await self.inventory()
        targets = image_items(items, image)
        if not targets:
            have = ", ".join(f"{i.id} ({i.component}) {i.version}" for i in items) or "nothing"
            raise BmcRefused(f"BMC {self.where} reports no firmware the image applies to "
                             f"({image.component}{', targets ' + ', '.join(image.targets) if image.targets else ''}); "
                             f"its inventory: {have}")
        locked = [i.id for i in targets if not i.updateable]
        if locked:
            raise BmcRefused(f"BMC {self.where} says {', '.join(locked)} cannot be updated (Updateable: false)")
        uris = [self._uris[i.id] for i in targets]
        push_uri = service.get("MultipartHttpPushUri")
        simple = ((service.get("Actions") or {}).get("#UpdateService.SimpleUpdate") or {}).get("target")
        mode = self.c.transfer
        if mode == "auto":
            mode = "multipart" if push_uri else "simple"
        if mode == "multipart" and not push_uri:
            raise BmcRefused(f"BMC {self.where} offers no MultipartHttpPushUri (transfer: multipart)")
        if mode == "simple" and not simple:
            raise BmcRefused(f"BMC {self.where} offers no UpdateService.SimpleUpdate")
        if mode == "multipart":
            await progress("download", 0, f"pushing {image.filename} ({image.size_bytes} bytes) to the BMC (multipart)")
            response = await with_retries(lambda: self._push(push_uri, image, uris), attempts=self.c.attempts,
                                          what=f"redfish {self.where}")
        else:
            body: dict[str, Any] = {"ImageURI": image.url,
                                    "TransferProtocol": "HTTPS" if image.url.startswith("https:") else "HTTP"}
            if uris:
                body["Targets"] = uris
            await progress("download", 0, f"the BMC fetches {image.filename} from the orchestrator (SimpleUpdate)")
            response = await self.http.call("POST", simple, body)
        task = task_uri(response)
        if task is None:
            return InstallOutcome(message=f"the BMC applied {image.filename} without a task")
        return await self._follow(task, progress)

    async def _push(self, uri: str, image: FirmwareImage, targets: list[str]) -> Any:
        params = msgspec.json.encode({"Targets": targets, "@Redfish.OperationApplyTime": "Immediate"})
        with Path(image.path).open("rb") as f:  # reopened on every attempt
            return await self.http.request(
                "POST", uri, files={"UpdateParameters": (None, params, "application/json"),
                                    "UpdateFile": (image.filename, f, "application/octet-stream")},
            )

    async def _follow(self, task: str, progress: Progress) -> InstallOutcome:
        deadline = time.monotonic() + self.c.task_timeout_s
        seen: tuple[Any, ...] = ()
        state, percent = "New", None
        while True:
            try:
                doc = await self.http.get(task)
            except BmcUnreachable as exc:
                raise BmcUnreachable(f"{exc} while following update task {task} (last seen {state}"
                                     f"{f', {percent}%' if percent is not None else ''})") from None
            state = str(doc.get("TaskState") or "Completed")  # a task monitor's final answer has no TaskState
            percent = doc.get("PercentComplete")
            messages = task_messages(doc)
            last = messages[-1][1] if messages else ""
            phase = "download" if state in WAITING_TASK or (state == "Running" and not percent) else "install"
            if (state, percent, last) != seen:
                seen = (state, percent, last)
                await progress(phase, percent if isinstance(percent, int) else None,
                               f"BMC task {task.rsplit('/', 1)[-1]}: {state}" + (f": {last}" if last else ""))
            if state in FAILED_TASK or (state == "Completed" and doc.get("TaskStatus") == "Critical"):
                raise FirmwareUpdateError(f"BMC {self.where}: update task {task} ended {state}: {last or 'no message'}")
            if state == "Completed":
                return InstallOutcome(message=last or "update task completed", reboot_required=needs_reset(doc))
            if time.monotonic() > deadline:
                raise FirmwareUpdateError(f"BMC {self.where}: update task {task} still {state} after "
                                          f"{self.c.task_timeout_s:.0f}s (task_timeout_s)")
            await anyio.sleep(self.c.poll_interval_s)

    # ------------------------------------------------------------------ reboot
    async def reboot(self, progress: Progress) -> str:
        await self._session()
        doc, _ = await self.boot.system()
        was_on = str(doc.get("PowerState")) in ("On", "PoweringOn")
        kind = await self.boot.reset(doc, *(("ForceRestart", "PowerCycle", "GracefulRestart") if was_on else ("On", "ForceOn")))
        await progress("reboot", None, f"{kind} requested; waiting for the host to report On")
        started = time.monotonic()
        while True:
            await anyio.sleep(self.c.poll_interval_s)
            if await self.boot.power_state() == "on":
                return f"{kind}: the host was on again after {time.monotonic() - started:.0f}s"
            if time.monotonic() - started > self.c.reboot_timeout_s:
                raise FirmwareUpdateError(f"BMC {self.where}: the host did not report On within "
                                          f"{self.c.reboot_timeout_s:.0f}s of {kind} (reboot_timeout_s)")


@hookimpl
def vetting_firmware_providers():
    return [
        FirmwareProviderSpec(
            kind="redfish",
            factory=RedfishFirmware,
            config_type=RedfishFirmwareConfig,
            description="Redfish UpdateService: FirmwareInventory, multipart push or SimpleUpdate, task, reset",
        )
    ]
