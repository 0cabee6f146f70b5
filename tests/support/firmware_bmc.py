"""A Redfish BMC with a working firmware UpdateService, for the firmware tests.

    with FirmwareBmc(tmp_path / "bmc", inventory={"BIOS": ("System BIOS", "1.0.0")}, multipart=True) as bmc:
        bmc.inventory()               # {"BIOS": "1.0.0", ...} as the BMC reports it now
        bmc.events("simple_update")   # what the BMC received (see redfish_firmware.py)
        bmc.kill()                    # the BMC disappears (SIGKILL)

``package(id, version, **behaviour)`` builds a firmware image this BMC accepts. It is
``sushy-emulator`` (fake driver) extended through its Flask app object by
:mod:`tests.support.redfish_firmware`; see that module for what upstream lacks.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from .bmc import SushyEmulator

REPO = Path(__file__).resolve().parents[2]


def package(item: str, version: str, *, size: int = 64 << 10, **behaviour: Any) -> bytes:
    """A firmware image for :class:`FirmwareBmc`: updates inventory ``item`` to
    ``version``; ``behaviour``: ``apply="on_reset"``, ``install_s=…``, ``fail="…"``."""
    header = {"id": item, "version": version, **behaviour}
    return b"VETTING-FW " + json.dumps(header).encode() + b"\n" + os.urandom(size)


class FirmwareBmc(SushyEmulator):
    def __init__(self, directory: Path, *, inventory: dict[str, tuple[str, str]] | None = None,
                 multipart: bool = False, simple: bool = True, **kw: Any) -> None:
        super().__init__(directory, **kw)
        inventory = inventory or {"BIOS": ("System BIOS", "1.0.0"), "BMC": ("BMC Firmware", "5.10.00")}
        extra = {
            # authentication moves into the extension (Basic with the same file, or a session token)
            "SUSHY_EMULATOR_AUTH_FILE": None,
            "VETTING_FW_AUTH_FILE": str(self.dir / "htpasswd"),
            "VETTING_FW_INVENTORY": {k: {"Name": n, "Version": v} for k, (n, v) in inventory.items()},
            "VETTING_FW_MULTIPART": multipart,
            "VETTING_FW_SIMPLE": simple,
        }
        with (self.dir / "emulator.conf").open("a") as f:
            f.write("".join(f"{k} = {v!r}\n" for k, v in extra.items()))

    def command(self) -> list[str]:
        return [sys.executable, "-m", "tests.support.redfish_firmware", str(self.dir / "emulator.conf")]

    def start(self) -> FirmwareBmc:
        cwd = os.getcwd()
        os.chdir(REPO)  # ``python -m tests.support…`` resolves from the repository root
        try:
            super().start()
        finally:
            os.chdir(cwd)
        return self

    def inventory(self) -> dict[str, str]:
        col = self.get("/redfish/v1/UpdateService/FirmwareInventory")
        return {m["@odata.id"].rsplit("/", 1)[-1]: self.get(m["@odata.id"])["Version"] for m in col["Members"]}

    def events(self, *kinds: str) -> list[dict[str, Any]]:
        try:
            lines = (self.dir / "state" / "events.jsonl").read_text().splitlines()
        except OSError:
            return []
        out = [json.loads(x) for x in lines]
        return [e for e in out if not kinds or e["event"] in kinds]

    def kill(self) -> None:
        """The BMC disappears: SIGKILL, no goodbye."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def config(self, **kw: Any) -> dict[str, Any]:
        return super().config(**kw)
