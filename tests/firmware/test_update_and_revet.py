"""The whole story, on SQLite and PostgreSQL: a vetting run fails its Firmware stage
because the BMC reports BIOS 1.0.0 and the spec wants 1.1.0; the run's report and the
API offer "update and re-vet"; the operator takes it; a one-host plan updates the BIOS
through the BMC (SimpleUpdate: the BMC downloads the image from the orchestrator over
HTTP; the image is staged, so the host is reset; the inventory is re-read) and hands
the host to a new vetting run, whose Firmware stage passes with the new version.

Real parts: the server (uvicorn on loopback, real app and lifespan), sushy-emulator
(fake driver, HTTPS with its own certificate, extended with a working UpdateService:
tests/support/redfish_firmware.py), the redfish boot and firmware providers, and a
real ``vetting-agent connect`` running the real Firmware stage on this machine.

What the agent reads: the Firmware stage records the host's own versions (dmidecode,
ipmitool…: this machine's) and what the orchestrator read from the host's BMC before
the boot (``bmc:<id>``). This machine is not the emulated server, so the spec judges
the BMC's report only — ``bios: {"bmc:*": "1.1.0"}`` — which is also how an operator
would pin a component only the BMC can see.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import anyio
import httpx
import pytest

from tests.support.firmware_bmc import package

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

SPEC = 'description: "emulated server"\nfirmware:\n  bios:\n    "bmc:*": "1.1.0"\n'


async def run_agent(fw, tmp_path: Path, run_id: int, token: str) -> str:
    """A real ``vetting-agent connect`` for the run; returns its output."""
    argv = [sys.executable, "-m", "vetting_agent.cli", "connect", "--server", str(fw.client.base_url), "--run", str(run_id),
            "--token", token, "--spool-dir", str(tmp_path / f"spool-{run_id}"), "--authorized-keys",
            str(tmp_path / "keys"), "--no-sensors", "--final-wait", "3", "--backoff-cap", "1"]
    result = await anyio.run_process(argv, check=False, stderr=subprocess.STDOUT)
    return result.stdout.decode(errors="replace")


async def wait_run(fw, run_id: int, *states: str, timeout: float = 60) -> dict:
    return await fw.wait_state(run_id, *states, timeout=timeout)


async def test_a_failed_firmware_stage_is_updated_through_the_bmc_and_vetted_again(fw, bmc_factory, tmp_path):
    bmc = bmc_factory("node1", tls=True, multipart=False)  # SimpleUpdate only: the BMC pulls the image
    host = await fw.bmc_host("node1", bmc, spec_yaml=SPEC)
    image = package("BIOS", "1.1.0", install_s=0.5, apply="on_reset")
    art = await fw.add_artifact(image, "bios", "1.1.0", target="BIOS")

    # 1. a vetting run: its Firmware stage sees the BMC's BIOS 1.0.0 and fails
    r = await fw.op("POST", "/api/v1/runs", json={"host_id": host["id"], "profile": "quick", "non_destructive": True,
                                                   "stages": ["Firmware"]})
    assert r.status_code == 201, r.text
    run_id, token = r.json()["run"]["id"], r.json()["agent_token"]
    await wait_run(fw, run_id, "Booting")  # dispatched: BMC inventory read, powered on through the BMC
    out = await run_agent(fw, tmp_path, run_id, token)
    d = await wait_run(fw, run_id, "Failed")
    assert d["run"]["failed_stage"] == "Firmware", out
    assert "bios bmc:BIOS: firmware 1.0.0, expected 1.1.0" in d["run"]["reason"]

    offer = await fw.ok("GET", f"/api/v1/runs/{run_id}/firmware-remediation")
    assert offer["available"] and offer["why_not"] is None
    [o] = offer["offers"]
    assert (o["component"], o["actual"], o["expected"], o["artifact"]["id"]) == ("bios", "1.0.0", ["1.1.0"], art["id"])
    events = await fw.ok("GET", f"/api/v1/runs/{run_id}/events")
    [offered] = [e for e in events if e["kind"] == "firmware.remediation_offered"]
    assert f"bios 1.0.0 → 1.1.0 (artifact {art['id']}" in offered["message"]
    # the failed run's report says so too
    with anyio.fail_after(30):
        while (r := await fw.op("GET", f"/api/v1/runs/{run_id}/report/json")).status_code != 200:
            await anyio.sleep(0.2)
    section = r.json()["sections"]["firmware_remediation"]
    assert "update and re-vet: bios 1.0.0 → 1.1.0" in section["data"]["offer"]
    html = (await fw.op("GET", f"/api/v1/runs/{run_id}/report/html")).text
    assert "Firmware remediation: update and re-vet" in html and f"vetting firmware remediate {run_id}" in html

    # 2. update and re-vet
    d = await fw.ok("POST", f"/api/v1/runs/{run_id}/firmware-remediation", 201, json={"reason": "ticket 1234"})
    plan_id = d["plan"]["id"]
    assert d["plan"]["source_run_id"] == run_id and d["plan"]["state"] == "running"
    assert d["plan"]["policy"]["vet_after_update"] == {"profile": "quick", "non_destructive": True, "stages": ["Firmware"]}
    u = await fw.wait_update(plan_id, "node1", lambda u: u["vet_run_id"] is not None, timeout=90)
    assert u["state"] == "completed" and u["changes"] == [
        {"artifact_id": art["id"], "component": "bios", "before": "1.0.0", "after": "1.1.0"}]
    assert bmc.inventory()["BIOS"] == "1.1.0"
    [pull] = bmc.events("simple_update")
    assert pull["image_uri"].startswith(f"{fw.client.base_url}/firmware/v1/images/vf_")
    assert pull["targets"] == ["/redfish/v1/UpdateService/FirmwareInventory/BIOS"]
    assert bmc.events("image_downloaded")[0]["bytes"] == len(image)  # from the orchestrator's artifact store
    # the image was staged: the host was reset (ForceRestart, or On when it was off) and
    # only then did the BMC report it active
    resets = [e for e in bmc.events("reset") if e["t"] > pull["t"]]
    assert resets and resets[0]["reset_type"] in ("ForceRestart", "On")
    assert bmc.events("activated")[0]["t"] > resets[0]["t"]
    async with httpx.AsyncClient() as client:  # the image link died with the update
        assert (await client.get(pull["image_uri"])).status_code == 404
    phases = [e["data"]["phase"] for e in await fw.plan_events(plan_id) if e["kind"] == "firmware.progress"]
    assert phases.index("download") < phases.index("install") < phases.index("reboot") < phases.index("verify")

    # 3. the new vetting run reads 1.1.0 from the BMC and passes the Firmware stage
    vet_id = u["vet_run_id"]
    vet = await fw.detail(vet_id)
    assert vet["run"]["actor"] == f"firmware plan {plan_id}"
    await wait_run(fw, vet_id, "Booting")
    vet_token = await pxe_token(fw, host["mac"])
    out = await run_agent(fw, tmp_path, vet_id, vet_token)
    vet = await wait_run(fw, vet_id, "Completed", "Failed")
    assert vet["run"]["state"] == "Completed", (vet["run"]["reason"], out)
    [stage] = vet["stages"]
    assert stage["name"] == "Firmware" and stage["state"] == "passed"
    assert {"component": "bios", "identifier": "bmc:BIOS", "version": "1.1.0"} in stage["summary"]["firmware"]
    d = await fw.wait_plan(plan_id, "completed", timeout=30)
    assert d["updates"][0]["vet_result"] == "pass"
    # the host's history has all of it
    kinds = [e["kind"] for e in await fw.ok("GET", f"/api/v1/hosts/{host['id']}/events")]
    for kind in ("firmware.running", "firmware.image_served", "firmware.completed", "firmware.vet_started"):
        assert kind in kinds
    assert len(bmc.events("session_created")) == len(bmc.events("session_deleted"))  # every session closed


async def pxe_token(fw, mac: str) -> str:
    """What the booting host's iPXE script carries: a fresh token for its queued run (the
    token the plan's vetting run was created with was never shown to anyone)."""
    r = await fw.client.get(f"/ipxe/{mac}")
    assert r.status_code == 200, r.text
    return r.text.split("vetting.token=", 1)[1].split()[0]


@pytest.fixture
def fw_settings():
    # the iPXE script names a live image; the "host" here never fetches it
    return {"pxe": {"kernel_url": "http://127.0.0.1:9/vmlinuz", "initrd_url": "http://127.0.0.1:9/initrd.img"}}
