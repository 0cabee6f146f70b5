"""The ``ipmi`` boot provider: parsers on captured ipmitool 1.8.19 output, then the
provider against OpenIPMI's real ``ipmi_sim`` on loopback, whose chassis power starts
and kills a process the test watches."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
import structlog

from tests.support.bmc import IpmiSim, wait_until
from vetting_core import BmcAuthFailed, BmcRefused, BmcUnreachable, BootError, load_registry
from vetting_core.tools import ToolResult
from vetting_server.boot.bmc.ipmi import (
    IpmiBoot,
    IpmiConfig,
    classify_failure,
    ipmitool_argv,
    parse_bootdev,
    parse_power_control,
    parse_power_status,
)

FIX = Path(__file__).parents[1] / "fixtures" / "ipmitool" / "1.8.19"


def capture(name: str) -> ToolResult:
    return ToolResult(
        argv=["ipmitool"], returncode=int((FIX / f"lanplus-{name}.rc").read_text()),
        stdout=(FIX / f"lanplus-{name}.stdout").read_text(), stderr=(FIX / f"lanplus-{name}.stderr").read_text(),
        duration_s=0.1,
    )


def test_parsers_read_the_confirmations():
    assert parse_power_status(capture("power-status-on").stdout) == "on"
    assert parse_power_status(capture("power-status-off").stdout) == "off"
    assert parse_power_control(capture("power-on").stdout) == "Up/On"
    assert parse_power_control(capture("power-cycle").stdout) == "Cycle"
    assert parse_power_control(capture("power-off").stdout) == "Down/Off"
    assert parse_bootdev(capture("bootdev-pxe-efiboot").stdout) == "pxe"
    assert parse_bootdev(capture("bootdev-none").stdout) == "none"
    # a failed call printed nothing to stdout: no confirmation to find
    assert parse_power_status(capture("wrong-password").stdout) is None


@pytest.mark.parametrize(
    ("name", "cls", "words"),
    [
        ("wrong-password", BmcAuthFailed, "wrong password"),
        ("unknown-user", BmcAuthFailed, "unknown user name"),
        ("cipher-suite-17", BmcRefused, "cipher suite"),
        ("insufficient-privilege", BmcRefused, "insufficient privilege"),
        ("no-answer", BmcUnreachable, "no answer"),
        ("unknown-host", BmcUnreachable, "does not resolve"),
    ],
)
def test_failures_are_told_apart(name, cls, words):
    res = capture(name)
    assert res.returncode == 1  # all of them: the exit code alone says nothing more
    err = classify_failure(res, "10.0.0.7", "chassis power status")
    assert type(err) is cls and words in str(err) and "BMC 10.0.0.7" in str(err)
    assert err.transient is (cls is BmcUnreachable)


def test_config_takes_the_password_by_reference_only():
    with pytest.raises(msgspec.ValidationError, match="never stored in a host's boot_config"):
        msgspec.convert({"address": "10.0.0.7", "username": "admin", "password": "hunter2"}, IpmiConfig)
    with pytest.raises(msgspec.ValidationError, match="exactly one of password_env and password_file"):
        msgspec.convert({"address": "10.0.0.7", "username": "admin"}, IpmiConfig)
    with pytest.raises(msgspec.ValidationError, match=r"\$\.address"):
        msgspec.convert({"address": "-oProxy", "username": "a", "password_env": "X"}, IpmiConfig)
    c = msgspec.convert({"address": "10.0.0.7", "username": "admin", "password_env": "BMC_PW", "efiboot": True}, IpmiConfig)
    argv = ipmitool_argv(c, "chassis", "power", "status")
    assert "-E" in argv and "-P" not in argv and "BMC_PW" not in argv


def test_the_provider_is_registered():
    assert load_registry().boot_providers["ipmi"].config_type is IpmiConfig


@pytest.fixture
def bmc(tmp_path):
    with IpmiSim(tmp_path / "bmc") as sim:
        yield sim


@pytest.mark.anyio
async def test_power_on_sets_a_one_time_pxe_boot_then_powers_on(bmc, monkeypatch):
    monkeypatch.setenv("BMC_PW", bmc.password)
    ipmi = IpmiBoot(msgspec.convert(bmc.config(password_env="BMC_PW", efiboot=True), IpmiConfig))
    assert await ipmi.power_state() == "off" and not bmc.powered
    message = await ipmi.power_on(None, boot_target="pxe")
    assert "next boot from PXE (UEFI); powered on" in message
    assert bmc.powered and bmc.boot_device == "pxe"
    assert bmc.calls().index("set boot pxe") < bmc.calls().index("set power 1")  # boot flag first
    first = bmc.pid
    # a host that is already on is power cycled: WoL cannot do this
    message = await ipmi.power_on(None)
    assert "power cycled (it was on)" in message
    wait_until(lambda: bmc.powered and bmc.pid != first, 15, "the machine to come back after the cycle")
    assert await ipmi.power_state() == "on"
    # after the verdict
    assert "boot override cleared" in await ipmi.clear_boot_override()
    assert bmc.boot_device == "none"
    assert "powered off" in await ipmi.power_off()
    assert not bmc.powered
    assert "already off" in await ipmi.power_off()


@pytest.mark.anyio
async def test_a_password_file_works_and_nothing_leaks(bmc, tmp_path):
    pw = tmp_path / "bmc.pw"
    pw.write_text(bmc.password + "\n")
    ipmi = IpmiBoot(msgspec.convert(bmc.config(password_file=str(pw)), IpmiConfig))
    with structlog.testing.capture_logs() as logs:
        assert await ipmi.power_state() == "off"
    assert bmc.password not in repr(logs)


@pytest.mark.anyio
async def test_a_wrong_password_fails_at_once_without_retries(bmc, monkeypatch):
    monkeypatch.setenv("BMC_PW", "not-the-password")
    ipmi = IpmiBoot(msgspec.convert(bmc.config(password_env="BMC_PW", attempts=3), IpmiConfig))
    with structlog.testing.capture_logs() as logs, pytest.raises(BmcAuthFailed, match="wrong password") as exc:
        await ipmi.power_on(None)
    assert "attempts" not in str(exc.value)  # one try: retrying a wrong password can lock the account
    assert not [e for e in logs if e["event"] == "boot.retry"]
    assert not bmc.powered


@pytest.mark.anyio
async def test_an_unreachable_bmc_is_retried_with_backoff_then_named(bmc, monkeypatch):
    monkeypatch.setenv("BMC_PW", bmc.password)
    # nothing listens there; each try is cut at 2 s (ipmitool alone would give up after 6 s)
    cfg = {**bmc.config(password_env="BMC_PW", attempts=2, timeout_s=2), "port": bmc.port + 1}
    ipmi = IpmiBoot(msgspec.convert(cfg, IpmiConfig))
    with structlog.testing.capture_logs() as logs, pytest.raises(BmcUnreachable) as exc:
        await ipmi.power_state()
    assert f"127.0.0.1:{bmc.port + 1} unreachable: ipmitool chassis power status got no answer within 2s" in str(exc.value)
    assert "after 2 attempts" in str(exc.value)
    assert [e["retry_in_s"] for e in logs if e["event"] == "boot.retry"] == [1.0]


@pytest.mark.anyio
async def test_a_missing_password_variable_is_named(bmc, monkeypatch):
    monkeypatch.delenv("BMC_PW_NOT_SET", raising=False)
    ipmi = IpmiBoot(msgspec.convert(bmc.config(password_env="BMC_PW_NOT_SET"), IpmiConfig))
    before = bmc.calls()
    with pytest.raises(BootError, match="environment variable BMC_PW_NOT_SET is not set"):
        await ipmi.power_on(None)
    assert bmc.calls() == before  # nothing was sent
