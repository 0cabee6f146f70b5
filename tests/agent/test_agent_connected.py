"""The connected modes against a real ``vetting serve`` process (SQLite in a tmp dir).

The server finds the test-only chatter plugin through a ``vetting`` entry point of a
distribution put on its ``PYTHONPATH`` (tests/agent/support.py); the in-process agent
gets it registered by hand.
"""

from __future__ import annotations

import json
import os
import sys

import anyio
import anyio.to_thread
import pytest

from vetting_agent.cmdline import RunCoordinates, read_coordinates
from vetting_agent.hostmode import run_host
from vetting_agent.session import run_connected
from vetting_core import builtin
from vetting_core.plugins import load_registry

from .support import agent_options, db_counts, make_server, plugin_env

pytestmark = pytest.mark.anyio

HOLD_SPEC = "params:\n  Judged: {value: 50}\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("agent-srv")
    with make_server(tmp) as srv:
        yield srv


_macs = iter(range(1, 250))


def new_host(srv, spec: str = "", boot_provider: str = "manual") -> dict:
    n = next(_macs)
    return srv.create_host(f"node{n}", f"02:00:00:00:00:{n:02x}", spec_yaml=spec, boot_provider=boot_provider)


def coords(srv, run_id: int, token: str, url: str | None = None) -> RunCoordinates:
    return RunCoordinates(server=url or srv.base_url, run_id=run_id, token=token)


async def wait_state(srv, run_id: int, *states: str, timeout: float = 30.0) -> dict:
    return await anyio.to_thread.run_sync(lambda: srv.wait_state(run_id, *states, timeout=timeout))


async def test_connect_runs_the_pipeline_streams_everything_and_completes(server, registry, tmp_path):
    host = new_host(server)
    run_id, token = server.start_run(
        host["id"], profile="quick", stages=["InventoryCheck", "InvEcho", "Chatter", "Judged", "NeedsGpu"]
    )
    outcome = await run_connected(coords(server, run_id, token), registry, agent_options(tmp_path))
    assert outcome.passed and outcome.exit_code == 0, outcome
    assert outcome.state == "Completed"
    assert outcome.verdicts == {
        "InventoryCheck": "passed", "InvEcho": "passed", "Chatter": "passed", "Judged": "passed", "NeedsGpu": "skipped",
    }
    detail = server.run(run_id)
    assert detail["run"]["state"] == "Completed"
    stages = {s["name"]: s for s in detail["stages"]}
    # the inventory InventoryCheck collected was handed to the later stages
    assert "cpu" in stages["InvEcho"]["summary"]["inventory_sections"]
    assert stages["InvEcho"]["summary"]["cpu_threads"] == os.cpu_count()
    assert stages["NeedsGpu"]["state"] == "skipped" and stages["NeedsGpu"]["reason"] == "no GPU in the inventory"
    assert stages["Chatter"]["summary"] == {"samples": 50, "lines": 20}
    # every line and sample the agent produced is in the database, once
    counts = db_counts(server, run_id)
    assert counts["log"] == outcome.produced["log"] and counts["sensor"] == outcome.produced["sensor"]
    assert outcome.produced["sensor"] > 50  # the stage's 50 + the sidecar's
    assert outcome.produced["result"] == 5 and outcome.rejected == 0


async def test_critical_breach_fails_the_stage_and_opens_a_hold_until_released(server, registry, tmp_path):
    host = new_host(server, spec=HOLD_SPEC)
    run_id, token = server.start_run(host["id"], stages=["Judged"])
    opts = agent_options(tmp_path, hold_ip="192.0.2.7")
    result: dict = {}

    async def agent() -> None:
        result["outcome"] = await run_connected(coords(server, run_id, token), registry, opts)

    async with anyio.create_task_group() as tg:
        tg.start_soon(agent)
        detail = await wait_state(server, run_id, "FailedHolding")
        assert detail["run"]["hold_ip"] == "192.0.2.7"
        stage = {s["name"]: s for s in detail["stages"]}["Judged"]
        assert stage["state"] == "failed" and "critical threshold breach" in stage["reason"]
        with anyio.fail_after(10):
            while not opts.authorized_keys.exists():
                await anyio.sleep(0.1)
        line = opts.authorized_keys.read_text().strip()
        assert line.startswith('expiry-time="') and " ssh-ed25519 " in line
        assert line.endswith(f"vetting-hold-run-{run_id}")
        await anyio.sleep(1.5)  # the agent keeps heartbeating during the hold
        assert "outcome" not in result
        server.api("POST", f"/api/v1/runs/{run_id}/release", json={"reason": "inspected"}).raise_for_status()
    outcome = result["outcome"]
    assert not outcome.passed and outcome.exit_code == 1
    assert outcome.hold_ssh and "192.0.2.7" in outcome.hold_ssh
    assert outcome.verdicts["Judged"] == "failed"


async def test_override_retries_the_held_stage_with_override_flags(server, registry, tmp_path):
    host = new_host(server)
    run_id, token = server.start_run(host["id"], stages=["Flags", "Chatter"])
    result: dict = {}

    async def agent() -> None:
        result["outcome"] = await run_connected(coords(server, run_id, token), registry, agent_options(tmp_path))

    async with anyio.create_task_group() as tg:
        tg.start_soon(agent)
        detail = await wait_state(server, run_id, "FailedHolding")
        assert {s["name"]: s for s in detail["stages"]}["Flags"]["reason"] == "no wipe override armed"
        r = server.api("POST", f"/api/v1/runs/{run_id}/override", json={"flags": {"wipe": True}})
        assert r.status_code == 200, r.text
        await wait_state(server, run_id, "Completed")
    outcome = result["outcome"]
    assert outcome.passed, outcome
    stages = {s["name"]: s for s in server.run(run_id)["stages"]}
    assert stages["Flags"]["state"] == "passed" and stages["Flags"]["summary"] == {"override_flags": {"wipe": True}}
    assert stages["Chatter"]["state"] == "passed"


async def test_a_stage_not_installed_on_the_agent_fails_with_that_reason(server, tmp_path):
    host = new_host(server)
    run_id, token = server.start_run(host["id"], stages=["Chatter"])
    bare = load_registry(entry_points=False, plugins=[("core", builtin)])  # the agent lacks the plugin
    result: dict = {}

    async def agent() -> None:
        result["outcome"] = await run_connected(coords(server, run_id, token), bare, agent_options(tmp_path))

    with anyio.fail_after(40):
        async with anyio.create_task_group() as tg:
            tg.start_soon(agent)
            detail = await wait_state(server, run_id, "FailedHolding")
            server.api("POST", f"/api/v1/runs/{run_id}/release").raise_for_status()
    stage = {s["name"]: s for s in detail["stages"]}["Chatter"]
    assert stage["state"] == "failed"
    assert "stage plugin 'Chatter' is not installed on this agent" in stage["reason"]
    assert not result["outcome"].passed


async def test_bad_token_is_surfaced_not_retried_forever(server, registry, tmp_path):
    host = new_host(server)
    run_id, _token = server.start_run(host["id"], stages=["Chatter"])
    with anyio.fail_after(10):
        outcome = await run_connected(coords(server, run_id, "vr_wrong"), registry, agent_options(tmp_path))
    assert not outcome.passed and "401" in outcome.reason


async def test_pxe_mode_reads_the_kernel_command_line_and_powers_off(server, tmp_path):
    host = new_host(server)
    run_id, token = server.start_run(host["id"], stages=["Chatter"])
    cmdline = tmp_path / "cmdline"
    cmdline.write_text(
        f"BOOT_IMAGE=vmlinuz initrd=initrd.img boot=live quiet vetting.server={server.base_url} "
        f"vetting.run={run_id} vetting.token={token} -- --init-args\n"
    )
    assert read_coordinates(cmdline).run_id == run_id
    marker = tmp_path / "powered-off"
    proc = await anyio.run_process(
        [sys.executable, "-m", "vetting_agent.cli", "--log-format", "json", "pxe", "--cmdline", str(cmdline),
         "--spool-dir", str(tmp_path / "spool"), "--authorized-keys", str(tmp_path / "keys"),
         "--poweroff-command", f"touch {marker}", "--final-wait", "20", "--no-sensors"],
        env={**os.environ, **plugin_env(tmp_path)}, check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    assert marker.exists()  # "shutdown" on Completed ran the power-off command
    assert server.run(run_id)["run"]["state"] == "Completed"
    events = [json.loads(line) for line in proc.stderr.decode().splitlines() if line.startswith("{")]
    done = next(e for e in events if e["event"] == "agent.done")
    assert done["produced"]["log"] == db_counts(server, run_id)["log"]


async def test_pxe_mode_without_parameters_exits_2_naming_them(tmp_path):
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("console=ttyS0 quiet\n")
    proc = await anyio.run_process(
        [sys.executable, "-m", "vetting_agent.cli", "pxe", "--cmdline", str(cmdline)], check=False
    )
    assert proc.returncode == 2
    assert b"lacks vetting.server, vetting.run, vetting.token" in proc.stderr


async def test_host_mode_polls_picks_up_the_run_and_never_runs_destructive_stages(server, registry, tmp_path):
    host = new_host(server, boot_provider="agent")
    run_id, _run_token = server.start_run(host["id"], stages=["Chatter"])
    with anyio.fail_after(60):
        rc = await run_host(server.base_url, host["agent_token"], registry, agent_options(tmp_path), once=True)
    detail = server.run(run_id)
    assert rc == 0, (detail["run"], detail["stages"], server.log_tail(30))
    assert detail["run"]["state"] == "Completed"
    # the host was seen by its poll (the server flushes last_seen_at every 2 s)
    await anyio.to_thread.run_sync(
        lambda: _wait(lambda: server.api("GET", f"/api/v1/hosts/{host['id']}").json()["last_seen_at"] is not None)
    )
    # a destructive run asked for a host-mode host: the stage only ever sees a
    # non-destructive context
    run_id, _ = server.start_run(host["id"], profile="agenttest", non_destructive=False, stages=["Wiper"])
    with anyio.fail_after(60):
        rc = await run_host(server.base_url, host["agent_token"], registry, agent_options(tmp_path), once=True)
    detail = server.run(run_id)
    wiper = {s["name"]: s for s in detail["stages"]}["Wiper"]
    assert rc == 0 and wiper["state"] == "skipped" and wiper["summary"] == {"non_destructive": True}
    # a run token is not a host token
    rc = await run_host(server.base_url, "vr_not_a_host_token", registry, agent_options(tmp_path), once=True)
    assert rc == 2


async def test_a_conflicting_result_gets_409_and_is_surfaced_not_retried(server, registry, tmp_path):
    from vetting_agent.spool import Spool
    from vetting_core.model import Verdict
    from vetting_core.protocol import StageResult

    host = new_host(server, spec="params:\n  Sleeper: {sleep_s: 60}\n")
    run_id, token = server.start_run(host["id"], stages=["Chatter", "Sleeper"])
    opts = agent_options(tmp_path, final_wait_s=2)
    with anyio.fail_after(40):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run_connected, coords(server, run_id, token), registry, opts)
            await anyio.to_thread.run_sync(
                lambda: _wait(lambda: server.run(run_id)["run"]["current_stage"] == "Sleeper")
            )
            tg.cancel_scope.cancel()  # the first agent goes away during Sleeper
    # a different result for the finished stage sits in the spool (say, a corrupted retry)
    spool = await Spool.open(opts.spool_dir / f"run-{run_id}.sqlite")
    await spool.append_result(StageResult(stage="Chatter", verdict=Verdict.failed, reason="not what was sent"))
    await spool.aclose()
    with anyio.fail_after(30):
        outcome = await run_connected(coords(server, run_id, token), registry, opts)
    assert not outcome.passed and outcome.rejected == 1
    assert "409" in outcome.reason and "different result" in outcome.reason
    assert {s["name"]: s for s in server.run(run_id)["stages"]}["Chatter"]["state"] == "passed"


def _wait(predicate, timeout: float = 20.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.1)


async def test_an_agent_limited_to_non_destructive_refuses_a_destructive_stage(server, registry, tmp_path):
    host = new_host(server)
    run_id, token = server.start_run(host["id"], profile="agenttest", non_destructive=False, stages=["Wiper"])
    opts = agent_options(tmp_path, non_destructive_only=True, allow_hold=False)
    with anyio.fail_after(30):
        outcome = await run_connected(coords(server, run_id, token), registry, opts)
    assert not outcome.passed
    wiper = {s["name"]: s for s in server.run(run_id)["stages"]}["Wiper"]
    assert wiper["state"] == "failed" and "never runs destructive stages" in wiper["reason"]


async def test_cancel_mid_stage_aborts_the_agent_promptly(server, registry, tmp_path):
    host = new_host(server, spec="params:\n  Sleeper: {sleep_s: 120}\n")
    run_id, token = server.start_run(host["id"], stages=["Sleeper"])
    result: dict = {}

    async def agent() -> None:
        result["outcome"] = await run_connected(coords(server, run_id, token), registry, agent_options(tmp_path))

    with anyio.fail_after(30):  # far less than the stage's 120 s
        async with anyio.create_task_group() as tg:
            tg.start_soon(agent)
            await anyio.to_thread.run_sync(
                lambda: _wait(lambda: server.run(run_id)["run"]["current_stage"] == "Sleeper")
            )
            await anyio.sleep(1.0)
            server.api("POST", f"/api/v1/runs/{run_id}/cancel", json={"reason": "wrong host"}).raise_for_status()
    outcome = result["outcome"]
    assert not outcome.passed and outcome.state == "Cancelled"
    assert "abort" in outcome.reason


async def test_network_stage_never_credits_a_local_peer_to_a_nic(server, registry, tmp_path):
    """No params.server: each NIC's test leases a port of the orchestrator's iperf3 pool.
    Here the orchestrator runs on the machine under test, so the leased peer is one of
    its own addresses: iperf3 would measure loopback (tens of Gbit/s) and credit it to
    the NIC. Each NIC's sub-step is skipped with that reason instead, and every lease
    is given back. (Traffic that really crosses a NIC is judged in
    tests/stages/network/test_network.py, across a veth pair into a namespace.)"""
    host = new_host(server, spec="params:\n  Network: {duration_s: 1, parallel: 1}\n")
    run_id, token = server.start_run(host["id"], stages=["InventoryCheck", "Network"])
    outcome = await run_connected(coords(server, run_id, token), registry, agent_options(tmp_path))
    detail = server.run(run_id)
    network = {s["name"]: s for s in detail["stages"]}["Network"]
    steps = [s for s in detail["substeps"] if s["stage_name"] == "Network"]
    nics = [s for s in steps if s["name"].startswith("nic:")]
    if not nics:
        pytest.skip("this machine has no physical NIC with link up")
    assert outcome.verdicts["Network"] == "skipped", (network, steps)
    for step in nics:
        assert step["state"] == "skipped" and "is an address of this machine" in step["reason"], step
    assert not [a for a in detail["artifacts"] if a["stage"] == "Network" and a["kind"] == "iperf3-json"]
    # the peer was leased (the check needs the address the orchestrator hands out) and given back
    log = server.log_tail(2000)
    leased = [line for line in log.splitlines() if "peer.leased" in line and f"run_id={run_id}" in line]
    released = [line for line in log.splitlines() if "peer.released" in line and f"run_id={run_id}" in line]
    assert len(leased) == len(released) == len(nics), log


async def test_a_missing_tool_holds_a_live_image_run_as_incomplete_naming_the_stage(server, registry, tmp_path, capsys):
    """Connect/PXE mode: the image must carry every tool, so a stage that could not run
    stops the run (held like any failure) — but as ``cannot_run``/``incomplete``, not as a
    hardware failure, and the HOLD line names the stage."""
    host = new_host(server)
    run_id, token = server.start_run(host["id"], profile="agenttest", stages=["NoTool", "Chatter"])
    result: dict = {}

    async def agent() -> None:
        result["outcome"] = await run_connected(coords(server, run_id, token), registry, agent_options(tmp_path))

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(agent)
            detail = await wait_state(server, run_id, "FailedHolding")
            await anyio.sleep(0.5)
            server.api("POST", f"/api/v1/runs/{run_id}/release").raise_for_status()
    stages = {s["name"]: s for s in detail["stages"]}
    assert stages["NoTool"]["state"] == "cannot_run"
    assert stages["NoTool"]["reason"] == "vetting-test-no-such-tool is not installed (not found on PATH)"
    assert stages["NoTool"]["summary"]["cannot_run"] == {"cause": "tool_missing", "tool": "vetting-test-no-such-tool"}
    assert stages["Chatter"]["state"] == "pending"
    run = detail["run"]
    assert (run["result"], run["failed_stage"]) == ("incomplete", "NoTool")
    assert run["reason"].startswith("NoTool could not run here: vetting-test-no-such-tool is not installed")
    assert "(not a hardware failure)" in run["reason"]
    out = capsys.readouterr().out
    assert f"HOLD: run {run_id} failed (NoTool could not run here: " in out
    events = server.api("GET", f"/api/v1/runs/{run_id}/events").json()
    assert any(e["message"].startswith("stage NoTool could not run: ") and e["level"] == "warning" for e in events)


async def test_a_missing_tool_in_host_mode_goes_on_and_ends_incomplete(server, registry, tmp_path):
    host = new_host(server, boot_provider="agent")
    run_id, _ = server.start_run(host["id"], profile="agenttest", stages=["NoTool", "Chatter"])
    with anyio.fail_after(60):
        rc = await run_host(server.base_url, host["agent_token"], registry, agent_options(tmp_path), once=True)
    detail = await wait_state(server, run_id, "Completed")
    stages = {s["name"]: s["state"] for s in detail["stages"]}
    assert stages == {"NoTool": "cannot_run", "Chatter": "passed"}
    assert detail["run"]["result"] == "incomplete"
    assert detail["run"]["reason"] == (
        "1 stage(s) could not run here: NoTool: vetting-test-no-such-tool is not installed (not found on PATH)"
    )
    assert rc == 3  # incomplete: neither passed (0) nor failed (1)
    report = json.loads(server.api("GET", f"/api/v1/runs/{run_id}/report/json").text)
    assert report["verdict"] == "incomplete"
    assert [f["stage"] for f in report["summary"]["failures"]] == ["NoTool"]
    ocptv = [json.loads(line) for line in server.api("GET", f"/api/v1/runs/{run_id}/report/ocptv").text.splitlines()]
    errors = [a["testStepArtifact"]["error"] for a in ocptv if "error" in a.get("testStepArtifact", {})]
    assert errors == [{"symptom": "cannot-run-tool-missing",
                       "message": "vetting-test-no-such-tool is not installed (not found on PATH)"}]
    end = ocptv[-1]["testRunArtifact"]["testRunEnd"]
    assert end == {"status": "ERROR", "result": "NOT_APPLICABLE"}


async def test_hold_message_names_the_orchestrator_stage_that_failed(server, registry, tmp_path, capsys):
    """InventoryCheck passes; SpecValidate, run by the server inside that result, fails:
    the HOLD line names SpecValidate, not InventoryCheck."""
    host = new_host(server, spec="cpu:\n  threads: 999\n")
    run_id, token = server.start_run(host["id"], stages=["InventoryCheck", "SpecValidate"])
    result: dict = {}

    async def agent() -> None:
        result["outcome"] = await run_connected(coords(server, run_id, token), registry, agent_options(tmp_path))

    with anyio.fail_after(90):
        async with anyio.create_task_group() as tg:
            tg.start_soon(agent)
            await wait_state(server, run_id, "FailedHolding", timeout=80)
            await anyio.sleep(0.5)
            server.api("POST", f"/api/v1/runs/{run_id}/release").raise_for_status()
    out = capsys.readouterr().out
    hold = [line for line in out.splitlines() if line.startswith("HOLD:")]
    assert hold and hold[0].startswith(f"HOLD: run {run_id} failed (SpecValidate: 1 critical spec mismatch(es): cpu.threads"), hold
    assert "InventoryCheck passed" not in out
