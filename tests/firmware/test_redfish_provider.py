"""The ``redfish`` firmware provider against a real sushy-emulator (fake driver) on
loopback, extended with a working UpdateService (tests/support/redfish_firmware.py):
inventory, multipart push and SimpleUpdate (the BMC downloads the image over HTTP),
the task followed to its end, a failing task, a reset that activates a staged image,
one session per update (closed), the password never in a log line, and a BMC that
disappears while its task runs."""

from __future__ import annotations

import functools
import hashlib
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import msgspec
import pytest
import structlog

from tests.support.firmware_bmc import FirmwareBmc, package
from vetting_core import BmcRefused, BmcUnreachable, FirmwareImage, FirmwareUpdateError, load_registry
from vetting_server.firmware.redfish import (
    RedfishFirmware,
    RedfishFirmwareConfig,
    component_of,
    needs_reset,
)

pytestmark = pytest.mark.anyio


def test_components_are_named_in_the_specs_vocabulary():
    assert component_of("BIOS", "System BIOS") == "bios"
    assert component_of("Installed-25227-7.10.30.00", "Integrated Dell Remote Access Controller") == "bmc"
    assert component_of("NIC.Slot.3-1", "Mellanox ConnectX-6 Lx") == "nic"
    assert component_of("Disk.Bay.0", "SSDSC2KB960G8R") == "disk_fw"
    assert component_of("RAID.Integrated.1-1", "PERC H755 Front") == "hba"
    assert component_of("Something", "Backplane 0") == "other"
    assert component_of("Something", "Backplane 0", {"*backplane*": "cpld"}) == "cpld"
    assert needs_reset({"Messages": [{"MessageId": "Base.1.8.ResetRequired"}]})
    assert not needs_reset({"Messages": [{"MessageId": "Update.1.0.UpdateSuccessful"}]})


def test_the_provider_is_registered_and_its_config_checked():
    assert load_registry().firmware_providers["redfish"].config_type is RedfishFirmwareConfig
    with pytest.raises(msgspec.ValidationError, match="never stored"):
        msgspec.convert({"address": "10.0.0.7", "username": "root", "password": "calvin"}, RedfishFirmwareConfig)
    with pytest.raises(msgspec.ValidationError, match=r"\$\.poll_interval_s"):
        msgspec.convert({"address": "10.0.0.7", "username": "r", "password_env": "X", "poll_interval_s": 0}, RedfishFirmwareConfig)


class Progress:
    def __init__(self):
        self.seen: list[tuple[str, int | None, str]] = []

    async def __call__(self, phase, percent, message):
        self.seen.append((phase, percent, message))


def image(tmp_path, data: bytes, *, component="bios", version="1.1.0", url="", targets=()) -> FirmwareImage:
    path = tmp_path / f"{component}-{version}.bin"
    path.write_bytes(data)
    return FirmwareImage(artifact_id=1, component=component, version=version, filename=path.name,
                         sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data), path=str(path),
                         url=url or f"http://127.0.0.1:1/{path.name}", targets=tuple(targets))


def provider(bmc: FirmwareBmc, **kw) -> RedfishFirmware:
    return RedfishFirmware(msgspec.convert(bmc.config(password_env="BMC_PW", poll_interval_s=0.2, **kw), RedfishFirmwareConfig))


@pytest.fixture
def bmc(tmp_path, monkeypatch):
    with FirmwareBmc(tmp_path / "bmc", multipart=True) as emu:
        monkeypatch.setenv("BMC_PW", emu.password)
        yield emu


@pytest.fixture
def http_dir(tmp_path):
    """A plain HTTP server on loopback serving tmp_path (what the BMC downloads from)."""
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a: None
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


async def test_multipart_push_follows_the_task_in_one_session(bmc, tmp_path):
    fw = provider(bmc)
    with structlog.testing.capture_logs() as logs:
        try:
            items = {i.id: i for i in await fw.inventory()}
            assert items["BIOS"].version == "1.0.0" and items["BIOS"].component == "bios"
            assert items["BMC"].component == "bmc"
            progress = Progress()
            outcome = await fw.install(image(tmp_path, package("BIOS", "1.1.0", install_s=0.6)), progress)
            assert not outcome.reboot_required and "BIOS updated to 1.1.0" in outcome.message
            assert {i.id: i.version for i in await fw.inventory()}["BIOS"] == "1.1.0"
        finally:
            await fw.close()
    pushes = bmc.events("multipart_push")
    assert len(pushes) == 1 and pushes[0]["targets"] == ["/redfish/v1/UpdateService/FirmwareInventory/BIOS"]
    assert not bmc.events("simple_update")
    phases = [p for p, _, _ in progress.seen]
    assert phases[0] == "download" and "install" in phases
    assert any(pct and 0 < pct < 100 for _, pct, _ in progress.seen)  # the task's progress came through
    # one session for the whole update, closed at the end; the password is in no log line
    assert [e["event"] for e in bmc.events("session_created", "session_deleted")] == ["session_created", "session_deleted"]
    assert bmc.password not in repr(logs)


async def test_simple_update_lets_the_bmc_download_the_image(tmp_path, monkeypatch, http_dir):
    with FirmwareBmc(tmp_path / "bmc", multipart=False, tls=False) as bmc:
        monkeypatch.setenv("BMC_PW", bmc.password)
        data = package("BMC", "5.20.00", install_s=0.4)
        img = image(tmp_path, data, component="bmc", version="5.20.00", url=f"{http_dir}/bmc-5.20.00.bin")
        fw = provider(bmc)
        try:
            outcome = await fw.install(img, Progress())
        finally:
            await fw.close()
        assert "BMC updated to 5.20.00" in outcome.message
        [call] = bmc.events("simple_update")
        assert call["image_uri"] == img.url and call["protocol"] == "HTTP"
        assert bmc.events("image_downloaded")[0]["bytes"] == len(data)
        assert bmc.inventory()["BMC"] == "5.20.00"


async def test_a_staged_image_needs_a_reset_to_show(bmc, tmp_path):
    fw = provider(bmc)
    try:
        outcome = await fw.install(image(tmp_path, package("BIOS", "1.2.0", install_s=0.2, apply="on_reset")), Progress())
        assert outcome.reboot_required and "reset the system" in outcome.message
        assert bmc.inventory()["BIOS"] == "1.0.0"  # staged, not active
        progress = Progress()
        message = await fw.reboot(progress)
        assert message.startswith("On: the host was on again")  # the fake system was off
        assert {i.id: i.version for i in await fw.inventory()}["BIOS"] == "1.2.0"
    finally:
        await fw.close()
    assert [e["reset_type"] for e in bmc.events("reset")] == ["On"]


async def test_a_failing_task_fails_with_the_bmcs_message(bmc, tmp_path):
    fw = provider(bmc)
    try:
        with pytest.raises(FirmwareUpdateError, match=r"ended Exception: package is not compatible with this platform"):
            await fw.install(image(tmp_path, package("BIOS", "9.9.9", install_s=0.2,
                                                     fail="package is not compatible with this platform")), Progress())
    finally:
        await fw.close()
    assert bmc.inventory()["BIOS"] == "1.0.0"
    assert not bmc.events("session_created")[1:]  # still one session, and it was closed
    assert len(bmc.events("session_deleted")) == 1


async def test_an_image_for_nothing_the_bmc_has_is_refused_before_the_push(bmc, tmp_path):
    fw = provider(bmc)
    try:
        with pytest.raises(BmcRefused, match=r"no firmware the image applies to \(nic\).*BIOS \(bios\) 1.0.0"):
            await fw.install(image(tmp_path, package("NIC", "2.0"), component="nic", version="2.0"), Progress())
    finally:
        await fw.close()
    assert not bmc.events("multipart_push", "simple_update")


async def test_a_bmc_that_disappears_mid_task_fails_the_update_with_the_reason(bmc, tmp_path):
    fw = provider(bmc, attempts=2)
    progress = Progress()

    async def kill_when_installing(phase, percent, message):
        await progress(phase, percent, message)
        if "Running" in message:  # the BMC's task runs
            bmc.kill()

    try:
        with pytest.raises(BmcUnreachable, match=r"unreachable.*while following update task .*Tasks/\d+ \(last seen Running, \d+%\)"):
            await fw.install(image(tmp_path, package("BIOS", "1.1.0", install_s=60)), kill_when_installing)
    finally:
        await fw.close()  # the session cannot be closed on a dead BMC: logged, not raised
