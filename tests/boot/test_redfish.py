"""The ``redfish`` boot provider against the real ``sushy-emulator`` (sushy-tools, fake
driver) on loopback, over HTTPS with a certificate made for the test. The fake driver
applies a power change 1–11 s after the request, as hardware does, so the test waits
for the state it expects."""

from __future__ import annotations

import msgspec
import pytest
import structlog

from tests.support.bmc import SushyEmulator, wait_until
from vetting_core import BmcAuthFailed, BmcRefused, BmcUnreachable, BootError, load_registry
from vetting_server.boot.bmc.redfish import RedfishBoot, RedfishConfig, pick_reset, redfish_message

pytestmark = pytest.mark.anyio


def test_config_is_checked():
    with pytest.raises(msgspec.ValidationError, match="never stored"):
        msgspec.convert({"address": "10.0.0.7", "username": "root", "password": "calvin"}, RedfishConfig)
    with pytest.raises(msgspec.ValidationError, match=r"\$\.address"):
        msgspec.convert({"address": "ftp://10.0.0.7", "username": "root", "password_env": "X"}, RedfishConfig)
    c = msgspec.convert({"address": "10.0.0.7:8443", "username": "root", "password_env": "X"}, RedfishConfig)
    assert c.base_url == "https://10.0.0.7:8443" and c.verify_tls is True  # HTTPS, verified, by default


def test_redfish_errors_and_resets_are_read():
    body = {"error": {"code": "Base.1.0.GeneralError", "message": "Power state Bogus is not supported",
                      "@Message.ExtendedInfo": [{"MessageId": "Base.1.0.GeneralError"}]}}
    assert redfish_message(body) == "Power state Bogus is not supported"
    assert redfish_message({"unexpected": 1}) == ""
    assert pick_reset(["On", "ForceOff", "ForceRestart"], "ForceRestart", "PowerCycle") == "ForceRestart"
    assert pick_reset(["On", "PowerCycle"], "ForceRestart", "PowerCycle") == "PowerCycle"
    assert pick_reset(None, "On") == "On"
    with pytest.raises(BmcRefused, match="allows none"):
        pick_reset(["Nmi"], "ForceOff", "GracefulShutdown")


def test_the_provider_is_registered():
    assert load_registry().boot_providers["redfish"].config_type is RedfishConfig


@pytest.fixture
def bmc(tmp_path, monkeypatch):
    with SushyEmulator(tmp_path / "bmc") as emu:
        monkeypatch.setenv("BMC_PW", emu.password)
        yield emu


def provider(bmc: SushyEmulator, **kw) -> RedfishBoot:
    return RedfishBoot(msgspec.convert(bmc.config(password_env="BMC_PW", **kw), RedfishConfig))


async def test_power_on_sets_a_one_time_pxe_boot_then_resets(bmc):
    rf = provider(bmc, boot_mode="UEFI")
    assert await rf.power_state() == "off"
    message = await rf.power_on(None, boot_target="pxe")
    assert "next boot from PXE" in message and "On (it was off)" in message
    boot = bmc.system()["Boot"]
    assert boot["BootSourceOverrideTarget"] == "Pxe" and boot["BootSourceOverrideMode"] == "UEFI"
    # the emulator ignores BootSourceOverrideEnabled and reports Continuous: the
    # provider says so instead of pretending the override is one-time
    assert "reports Continuous; cleared after the verdict" in message
    wait_until(lambda: bmc.power_state() == "On", 20, "the fake system to power on")
    message = await rf.power_on(None)
    assert "ForceRestart (it was on)" in message
    assert "boot override cleared" in await rf.clear_boot_override()
    assert bmc.system()["Boot"]["BootSourceOverrideTarget"] == "None"
    wait_until(lambda: bmc.power_state() == "On", 20, "the restart to finish")
    assert "ForceOff" in await rf.power_off()
    wait_until(lambda: bmc.power_state() == "Off", 20, "the fake system to power off")
    assert "already off" in await rf.power_off()


async def test_a_wrong_password_is_an_authentication_failure(bmc, monkeypatch):
    monkeypatch.setenv("BMC_PW", "not-the-password")
    with structlog.testing.capture_logs() as logs, pytest.raises(BmcAuthFailed, match=r"user 'vetting' was refused \(401\)"):
        await provider(bmc).power_on(None)
    assert not [e for e in logs if e["event"] == "boot.retry"]
    assert bmc.power_state() == "Off"


async def test_tls_is_verified_by_default(bmc):
    cfg = {k: v for k, v in bmc.config(password_env="BMC_PW").items() if k != "ca_file"}
    rf = RedfishBoot(msgspec.convert(cfg, RedfishConfig))
    with pytest.raises(BootError, match="TLS certificate is not trusted") as exc:
        await rf.power_state()
    assert not exc.value.transient and "set ca_file" in str(exc.value)
    # an explicit choice for an isolated network
    assert await provider(bmc, ca_file=None, verify_tls=False).power_state() == "off"


async def test_a_refused_action_carries_the_bmcs_message(tmp_path, monkeypatch):
    with SushyEmulator(tmp_path / "bmc", allow_power_off=False, tls=False) as emu:
        monkeypatch.setenv("BMC_PW", emu.password)
        rf = provider(emu)
        await rf.power_on(None)
        wait_until(lambda: emu.power_state() == "On", 20, "the fake system to power on")
        with pytest.raises(BmcRefused, match=r"refused POST .*ComputerSystem.Reset \(400\): Can not request power off"):
            await rf.power_off()


async def test_an_unreachable_bmc_is_retried_then_named(bmc):
    bmc.stop()
    with structlog.testing.capture_logs() as logs, pytest.raises(BmcUnreachable, match="after 2 attempts"):
        await provider(bmc, attempts=2).power_state()
    assert [e["retry_in_s"] for e in logs if e["event"] == "boot.retry"] == [1.0]


async def test_the_emulator_can_drive_a_machine(tmp_path, monkeypatch):
    """With power_on_cmd the emulated system is a process (a VM in the e2e test)."""
    with SushyEmulator(tmp_path / "bmc", tls=False, power_on_cmd="exec sleep 300") as emu:
        monkeypatch.setenv("BMC_PW", emu.password)
        rf = provider(emu)
        await rf.power_on(None)
        wait_until(lambda: emu.powered, 10, "the machine to start")
        first = emu.pid
        wait_until(lambda: emu.power_state() == "On", 20, "the fake system to power on")
        await rf.power_on(None)  # ForceRestart: a new machine
        wait_until(lambda: emu.powered and emu.pid != first, 10, "the machine to restart")
        wait_until(lambda: emu.power_state() == "On", 20, "the restart to finish")
        await rf.power_off()
        wait_until(lambda: not emu.powered, 10, "the machine to stop")
        assert emu.calls() == ["set power 1", "set reset 1", "set power 0"]
