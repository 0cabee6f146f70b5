"""What a firmware-update provider works with: inventory items, images, outcomes.

A firmware-update provider (hook ``vetting_firmware_providers``, record
:class:`~vetting_core.records.FirmwareProviderSpec`) is how the orchestrator reads a
host's firmware versions and installs an image through the host's management
controller. The orchestrator drives the phases of one host's update and the provider
does each step:

    download/install  install(image, progress) -> InstallOutcome   (follows the BMC's task to its end)
    reboot            reboot(progress) -> message                  (only when the outcome says so, or the artifact asks)
    verify            inventory() -> [FirmwareItem]                (the new version must show)
                      close()                                      (always: ends the BMC session)

Errors are :class:`vetting_core.boot.BootError` subclasses, whose text becomes the
host's failure reason: :class:`~vetting_core.boot.BmcUnreachable` (retried by the
provider, then final), :class:`~vetting_core.boot.BmcAuthFailed`,
:class:`~vetting_core.boot.BmcRefused`, and :class:`FirmwareUpdateError` for an
update the BMC ran and reported as failed.

``component`` uses the expected spec's vocabulary (``bios``, ``bmc``, ``nic``,
``hba``, ``nvme_fw``, ``disk_fw``, ``gpu_vbios``, ``cpld``...; ``other`` for what a
provider cannot classify), so an artifact, a spec line and an inventory item talk
about the same thing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from fnmatch import fnmatch

import msgspec

from .boot import BootError

#: ``await progress(phase, percent, message)``: phase is download, install, reboot or
#: verify; percent is 0–100 or None when the BMC does not say.
Progress = Callable[[str, "int | None", str], Awaitable[None]]

PHASES = ("download", "install", "reboot", "verify")


class FirmwareUpdateError(BootError):
    """The BMC ran the update and reported it failed (task ``Exception``/``Killed``), or
    the new version did not show afterwards. Not transient: the same image fails again."""


class FirmwareItem(msgspec.Struct, kw_only=True, frozen=True):
    """One entry of a host's firmware inventory as its BMC reports it."""

    id: str  # the provider's identifier (Redfish: the FirmwareInventory member Id)
    name: str
    version: str
    component: str  # spec vocabulary, or "other"
    updateable: bool = True


class FirmwareImage(msgspec.Struct, kw_only=True, frozen=True):
    """An artifact on its way to one host, already checked against its sha256.

    ``path`` is the verified file in the orchestrator's artifact store (for a push);
    ``url`` is where the BMC fetches it (a pull: the orchestrator serves it over HTTP
    for the duration of this update only). ``targets`` are globs over inventory item
    ids that the image applies to; empty means every item of ``component``.
    """

    artifact_id: int
    component: str
    version: str
    filename: str
    sha256: str
    size_bytes: int
    path: str
    url: str
    targets: tuple[str, ...] = ()


class InstallOutcome(msgspec.Struct, kw_only=True, frozen=True):
    """What ``install`` reports once the BMC says the update is done."""

    message: str
    reboot_required: bool = False


def image_items(items: list[FirmwareItem], image: FirmwareImage) -> list[FirmwareItem]:
    """The inventory items ``image`` applies to (pure): those whose id or name matches
    one of its ``targets`` globs (case-insensitive), or, without targets, those of its
    ``component``."""
    if image.targets:
        return [i for i in items if any(fnmatch(i.id.lower(), t.lower()) or fnmatch(i.name.lower(), t.lower())
                                        for t in image.targets)]
    return [i for i in items if i.component == image.component]
