"""A run drives its host's power through a real BMC emulator (ipmi_sim): powered on
into a one-time PXE boot when the run is dispatched, the override cleared and the host
powered off after the verdict or when a hold expires; a BMC error fails the run with
a reason an operator can act on (both engines)."""

from __future__ import annotations

from datetime import timedelta

import anyio
import pytest

from tests.support.bmc import IpmiSim
from vetting_core.config import settings_from_dict
from vetting_core.statemachine import RunState
from vetting_server.db.database import utcnow
from vetting_server.boot.power import KEEP, power_due

pytestmark = pytest.mark.anyio


@pytest.fixture
def settings_overrides():
    return {"boot": {"power_off_delay_s": 0}}


@pytest.fixture
def bmc(tmp_path, monkeypatch):
    with IpmiSim(tmp_path / "bmc") as sim:
        monkeypatch.setenv("VT_BMC_PW", sim.password)
        yield sim


async def until(predicate, timeout=20.0, what="a condition"):
    with anyio.fail_after(timeout):
        while not await predicate():
            await anyio.sleep(0.1)


async def ipmi_run(env, bmc, **boot):
    host = await env.create_host("bm1", "aa:bb:cc:00:05:01", boot_provider="ipmi",
                                 boot_config=bmc.config(password_env="VT_BMC_PW", efiboot=True, **boot))
    run_id, token = await env.start_run(host["id"])
    return host, run_id, token


async def test_a_run_powers_its_host_on_through_ipmi_and_off_after_the_verdict(env, bmc):
    _, run_id, token = await ipmi_run(env, bmc)
    d = await env.wait_state(run_id, "Booting", timeout=30)
    assert "IPMI 127.0.0.1:" in d["run"]["boot_message"] and "next boot from PXE (UEFI); powered on" in d["run"]["boot_message"]
    assert bmc.powered and bmc.boot_device == "pxe"
    hello = {"agent_version": "t", "hostname": "bm1", "boot_id": "b"}
    assert (await env.agent("POST", f"/api/v1/runs/{run_id}/hello", token, json=hello)).status_code == 200
    assert (await env.agent("POST", f"/api/v1/runs/{run_id}/claim", token, json=hello)).status_code == 200
    for stage in ("Alpha", "Beta"):
        r = await env.agent("POST", f"/api/v1/runs/{run_id}/result", token, json={"stage": stage, "verdict": "passed"})
        assert r.status_code == 200, r.text
    await env.wait_state(run_id, "Completed", timeout=30)
    await env.rt.power.sweep()

    async def cleaned():
        return [e for e in (await env.op("GET", f"/api/v1/runs/{run_id}/events")).json() if e["kind"] == "boot"
                and e["message"].startswith("after the verdict")]
    await until(cleaned, what="the clean-up event")
    event = (await cleaned())[0]
    assert "boot override cleared" in event["message"] and "powered off" in event["message"] and event["level"] == "info"
    assert not bmc.powered and bmc.boot_device == "none"
    assert await env.rt.db.fetchval("SELECT power_due_at FROM runs WHERE id = $1", run_id) is None  # done once


async def test_a_bmc_error_fails_the_run_with_its_reason(env, bmc, monkeypatch):
    monkeypatch.setenv("VT_BMC_PW", "not-the-password")
    _, run_id, _ = await ipmi_run(env, bmc)
    d = await env.wait_state(run_id, "Failed", timeout=30)
    assert d["run"]["reason"] == (f"boot provider ipmi: BMC 127.0.0.1:{bmc.port} authentication failed: wrong password "
                                  "(chassis bootdev pxe options=efiboot)")
    assert not bmc.powered


async def test_an_expired_hold_is_released_and_its_host_powered_off(env, bmc):
    _, run_id, token = await ipmi_run(env, bmc)
    await env.wait_state(run_id, "Booting", timeout=30)
    hello = {"agent_version": "t", "hostname": "bm1"}
    await env.agent("POST", f"/api/v1/runs/{run_id}/hello", token, json=hello)
    await env.agent("POST", f"/api/v1/runs/{run_id}/claim", token, json=hello)
    await env.agent("POST", f"/api/v1/runs/{run_id}/result", token, json={"stage": "Alpha", "verdict": "failed", "reason": "x"})
    r = await env.agent("POST", f"/api/v1/runs/{run_id}/hold", token, json={"ip": "10.0.0.7"})
    assert r.status_code == 200, r.text
    due = await env.rt.db.fetchval("SELECT power_due_at FROM runs WHERE id = $1", run_id)
    assert due is not None  # the hold's expiry
    await env.rt.power.sweep()
    assert bmc.powered  # the hold is still on: the operator may be logged in
    # the hold expires
    await env.rt.db.execute("UPDATE runs SET power_due_at = $2 WHERE id = $1", run_id, utcnow() - timedelta(seconds=1))
    await env.rt.power.sweep()
    await env.wait_state(run_id, "Released")
    events = (await env.op("GET", f"/api/v1/runs/{run_id}/events")).json()
    assert any(e["message"] == "hold expired: released" and e["actor"] == "vetting" for e in events)
    await env.rt.power.sweep()

    async def off():
        return not bmc.powered
    await until(off, what="the host to be powered off")
    assert bmc.boot_device == "none"


def test_when_the_power_is_due():
    s = settings_from_dict({"boot": {"power_off_delay_s": 30}, "hold": {"key_ttl_hours": 2}})
    now = utcnow()
    booted = {"boot_window_until": now, "hello_at": now, "state": "Running"}
    assert power_due(s, booted, RunState.Completed, {}, now) == now + timedelta(seconds=30)
    assert power_due(s, booted, RunState.Failed, {}, now) == now + timedelta(hours=2)  # a hold may open
    assert power_due(s, {**booted, "hello_at": None}, RunState.Failed, {}, now) == now + timedelta(seconds=30)
    assert power_due(s, booted, RunState.FailedHolding, {"hold_expires_at": now + timedelta(hours=1)}, now) == now + timedelta(hours=1)
    assert power_due(s, {**booted, "state": "FailedHolding"}, RunState.Running, {}, now) is None  # override
    assert power_due(s, booted, RunState.Cancelled, {}, now) == now
    assert power_due(s, booted, RunState.Running, {}, now) is KEEP
    # a run the server never powered on (cancelled in the queue): the host is not touched
    assert power_due(s, {**booted, "boot_window_until": None}, RunState.Cancelled, {}, now) is KEEP
    no_hold = settings_from_dict({"hold": {"enabled": False}})
    assert power_due(no_hold, booted, RunState.Failed, {}, now) == now + timedelta(seconds=60)
