"""Firmware campaigns end to end: a real server (SQLite and PostgreSQL) on a loopback
socket, real BMCs (sushy-emulator with a working UpdateService), the real redfish
provider. Covered: plans through the API (approval, pause, cancel, bad input), a
checksum mismatch refused before any push, a task that fails (retried, notified), a
BMC that disappears mid-task with stop-on-first-failure, the concurrency limit and
the maintenance window."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest

from tests.notifiers.receivers import WEBHOOK_SECRET, HttpReceiver
from tests.support.firmware_bmc import package

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


@pytest.fixture
def receiver():
    r = HttpReceiver().start()
    yield r
    r.stop()


@pytest.fixture
def fw_settings(receiver):
    """Every host update's move goes to a webhook on loopback (signed)."""
    return {"notifications": {
        "targets": [{"name": "hook", "kind": "webhook", "retries": 0,
                     "config": {"url": f"{receiver.base}/hook/fw", "secret": WEBHOOK_SECRET}}],
        "routes": [{"targets": ["hook"], "events": ["FirmwareUpdateStarted", "FirmwareUpdateRetrying",
                                                   "FirmwareUpdateFailed", "FirmwareUpdateCompleted"]}],
    }}


def plan_doc(hosts: list[str], art: dict, **policy) -> dict:
    return {"name": f"bios {art['version']}", "targets": hosts,
            "artifacts": [{"component": art["component"], "version": art["version"], "sha256": art["sha256"]}],
            "policy": policy}


async def test_plans_through_the_api_approval_pause_cancel_and_bad_input(fw, bmc_factory):
    bmc = bmc_factory("a")
    host = await fw.bmc_host("node1", bmc)
    await fw.create_host("plain", "02:00:00:00:99:01")  # manual boot, no BMC
    art = await fw.add_artifact(package("BIOS", "1.1.0"), "bios", "1.1.0", target="BIOS")
    assert art["targets"] == ["BIOS"] and len(art["sha256"]) == 64
    # the store refuses a damaged upload and keeps an image once
    r = await fw.op("POST", "/api/v1/firmware/artifacts", content=b"x" * 10,
                    params={"component": "bios", "version": "9", "filename": "x.bin", "sha256": "0" * 64})
    assert r.status_code == 422 and "SHA-256 is" in r.json()["detail"] and r.json()["extra"] == {"field": "sha256"}
    r = await fw.op("POST", "/api/v1/firmware/artifacts", content=package("BIOS", "1.1.0")[:0] + b"", params={
        "component": "bios", "version": "1", "filename": "e.bin"})
    assert r.status_code == 422 and "empty" in r.json()["detail"]

    bad = [
        (plan_doc(["ghost"], art), "targets: no such host(s): ghost"),
        (plan_doc(["plain"], art), "host(s) without a firmware provider: plain"),
        ({**plan_doc(["node1"], art), "artifacts": [{"component": "bios", "version": "1.1.0", "sha256": "b" * 64}]},
         "no artifact with SHA-256"),
        ({**plan_doc(["node1"], art), "artifacts": [{"component": "bmc", "version": "1.1.0", "sha256": art["sha256"]}]},
         "not bmc 1.1.0"),
        (plan_doc(["node1"], art, vet_after_update={"profile": "nope"}), "policy.vet_after_update"),
        (plan_doc(["node1"], art, max_concurrent=0), None),
    ]
    for body, text in bad:
        r = await fw.op("POST", "/api/v1/firmware/plans", json=body)
        assert r.status_code in (400, 422), r.text
        if text:
            assert text in r.json()["detail"], r.json()
    d = await fw.plan(plan_doc(["node1"], art, approval_required=True), start=False)
    pid = d["plan"]["id"]
    assert d["plan"]["state"] == "draft" and d["updates"][0]["state"] == "pending"
    r = await fw.op("POST", f"/api/v1/firmware/plans/{pid}/start", json={})
    assert r.status_code == 409 and "needs approval first" in r.json()["detail"]
    assert (await fw.ok("POST", f"/api/v1/firmware/plans/{pid}/approve", json={"reason": "CHG-42"}))["plan"]["approved_by"] == "admin"
    r = await fw.op("POST", f"/api/v1/firmware/plans/{pid}/pause", json={})
    assert r.status_code == 409 and "is approved; it cannot pause" in r.json()["detail"]
    d = await fw.ok("POST", f"/api/v1/firmware/plans/{pid}/cancel", json={"reason": "wrong image"})
    assert d["plan"]["state"] == "cancelled" and d["updates"][0]["state"] == "cancelled"
    kinds = [e["kind"] for e in await fw.plan_events(pid)]
    assert kinds == ["firmware.plan_created", "firmware.plan_approved", "firmware.plan_cancelled", "firmware.cancelled"]
    assert not bmc.events("simple_update", "multipart_push") and bmc.inventory()["BIOS"] == "1.0.0"
    # the host's inventory, read live through its BMC
    inv = await fw.ok("GET", f"/api/v1/firmware/hosts/{host['id']}/inventory")
    assert inv["provider"] == "redfish" and inv["config_from"] == "firmware_config"
    assert {i["id"]: (i["component"], i["version"]) for i in inv["items"]} == {"BIOS": ("bios", "1.0.0"), "BMC": ("bmc", "5.10.00")}


async def test_a_changed_image_is_refused_before_anything_is_pushed(fw, bmc_factory):
    bmc = bmc_factory("a", multipart=True)
    await fw.bmc_host("node1", bmc)
    art = await fw.add_artifact(package("BIOS", "1.1.0"), "bios", "1.1.0")
    path = Path(fw.rt.data_dir / "firmware" / f"{art['sha256']}.bin")
    path.write_bytes(path.read_bytes()[:-1] + b"\x00")  # one byte changed on disk since it was added
    d = await fw.plan(plan_doc(["node1"], art, retries=2))
    d = await fw.wait_plan(d["plan"]["id"], "failed")
    [u] = d["updates"]
    assert u["state"] == "failed" and u["attempts"] == 1  # never retried
    assert f"expected {art['sha256']}; refusing to push it" in u["reason"]
    assert not bmc.events("session_created", "multipart_push", "simple_update")  # the BMC was not even contacted


async def test_a_failing_task_is_retried_then_fails_and_every_move_is_notified(fw, bmc_factory, receiver):
    bmc = bmc_factory("a", multipart=True)
    await fw.bmc_host("node1", bmc)
    art = await fw.add_artifact(package("BIOS", "1.1.0", install_s=0.2, fail="flash write error at 0x7f0000"),
                                "bios", "1.1.0")
    d = await fw.plan(plan_doc(["node1"], art, retries=1, retry_delay_s=0))
    d = await fw.wait_plan(d["plan"]["id"], "failed")
    [u] = d["updates"]
    assert u["state"] == "failed" and u["attempts"] == 2
    assert "update task /redfish/v1/TaskService/Tasks/101 ended Exception: flash write error at 0x7f0000" in u["reason"]
    assert len(bmc.events("multipart_push")) == 2 and bmc.inventory()["BIOS"] == "1.0.0"
    assert len(bmc.events("session_created")) == len(bmc.events("session_deleted")) == 2  # one per attempt, closed
    moves = [e["kind"] for e in await fw.plan_events(d["plan"]["id"]) if e["kind"] != "firmware.progress"]
    assert moves == ["firmware.plan_created", "firmware.plan_running", "firmware.running", "firmware.retrying",
                     "firmware.running", "firmware.failed", "firmware.plan_failed"]
    got = receiver.wait_for("/hook/", 4, timeout=10)
    events = [json.loads(r.body)["event"] for r in got]
    assert [e["kind"] for e in events] == ["FirmwareUpdateStarted", "FirmwareUpdateRetrying", "FirmwareUpdateStarted",
                                          "FirmwareUpdateFailed"]
    failed = events[-1]
    assert failed["severity"] == "critical" and failed["plan_id"] == d["plan"]["id"] and failed["host_name"] == "node1"
    assert "flash write error" in failed["message"] and failed.get("run_id") is None
    assert all(r.verified for r in got)


async def test_a_bmc_that_disappears_fails_its_host_and_the_next_host_is_not_started(fw, bmc_factory):
    first, second = bmc_factory("a", multipart=True), bmc_factory("b", multipart=True)
    await fw.bmc_host("node1", first, attempts=2)
    await fw.bmc_host("node2", second)
    art = await fw.add_artifact(package("BIOS", "1.1.0", install_s=30), "bios", "1.1.0")
    d = await fw.plan(plan_doc(["node1", "node2"], art, max_concurrent=1, stop_on_failure=True))
    pid = d["plan"]["id"]
    await fw.wait_update(pid, "node1", lambda u: "Running" in (u["message"] or ""))  # the BMC's task runs
    first.kill()  # the BMC goes away while its task runs
    d = await fw.wait_plan(pid, "failed", timeout=60)
    u1, u2 = d["updates"]
    assert u1["state"] == "failed" and "unreachable" in u1["reason"]
    assert "while following update task /redfish/v1/TaskService/Tasks/100 (last seen Running" in u1["reason"]
    assert u2["state"] == "cancelled" and "node1 failed and the plan stops on the first failure" in u2["reason"]
    assert not second.events("session_created", "multipart_push")  # node2's BMC never heard from us
    assert d["plan"]["reason"] == "0 of 2 host(s) updated, 1 failed, 1 not started"


async def test_no_more_hosts_at_once_than_max_concurrent(fw, bmc_factory):
    bmcs = [bmc_factory(n, multipart=True) for n in "abc"]
    for i, bmc in enumerate(bmcs):
        await fw.bmc_host(f"node{i + 1}", bmc)
    art = await fw.add_artifact(package("BIOS", "1.1.0", install_s=1.5), "bios", "1.1.0")
    d = await fw.plan(plan_doc(["node1", "node2", "node3"], art, max_concurrent=2))
    d = await fw.wait_plan(d["plan"]["id"], "completed", timeout=90)
    assert [u["state"] for u in d["updates"]] == ["completed"] * 3
    assert all(b.inventory()["BIOS"] == "1.1.0" for b in bmcs)
    assert [u["changes"] for u in d["updates"]][0] == [{"artifact_id": art["id"], "component": "bios", "before": "1.0.0", "after": "1.1.0"}]
    # each BMC's own record of its task: from the push to the task's end
    spans = []
    for b in bmcs:
        push = b.events("multipart_push")[0]["t"]
        end = max(e["t"] for e in b.events("task") if e["state"] == "Completed")
        spans.append((push, end))
    overlap = max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans)
    assert overlap == 2, spans  # two at once, never three
    third = sorted(spans)[2][0]
    assert third >= min(e for _, e in sorted(spans)[:2])  # the third started only after one of the first two ended


async def test_hosts_start_only_inside_the_maintenance_window(fw, bmc_factory):
    bmc = bmc_factory("a", multipart=True)
    await fw.bmc_host("node1", bmc)
    art = await fw.add_artifact(package("BIOS", "1.1.0", install_s=0.2), "bios", "1.1.0")
    runner = fw.rt.campaigns
    runner.clock = lambda: datetime(2026, 12, 7, 12, 0, tzinfo=UTC)  # Monday noon
    window = {"days": ["sat", "sun"], "start": "22:00", "end": "04:00", "timezone": "UTC"}
    d = await fw.plan(plan_doc(["node1"], art, maintenance_window=window))
    pid = d["plan"]["id"]
    with anyio.fail_after(10):
        while not (d := await fw.ok("GET", f"/api/v1/firmware/plans/{pid}"))["plan"]["waiting"]:
            await anyio.sleep(0.1)
    assert d["plan"]["state"] == "running" and d["updates"][0]["state"] == "pending"
    assert d["plan"]["waiting"] == ("waiting for the maintenance window (22:00–04:00 UTC, sat,sun); "
                                    "next opens 2026-12-12T22:00+00:00")
    await anyio.sleep(1.0)  # several steps: still nothing
    assert not bmc.events("session_created") and (await fw.ok("GET", f"/api/v1/firmware/plans/{pid}"))["updates"][0]["state"] == "pending"
    runner.clock = lambda: datetime(2026, 12, 13, 2, 30, tzinfo=UTC)  # Sunday 02:30: Saturday's window
    d = await fw.wait_plan(pid, "completed", timeout=30)
    assert d["updates"][0]["state"] == "completed" and bmc.inventory()["BIOS"] == "1.1.0"
    assert d["plan"]["waiting"] is None
