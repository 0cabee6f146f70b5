"""Never lose a sample: kill -9 the server, cut the network, kill -9 the agent.

Each test counts, on the agent side, every log line and sample it produced (the spool
keeps per-entry item counts) and compares with the rows in the server's database:
equal means none lost and none stored twice.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from vetting_agent.cmdline import RunCoordinates
from vetting_agent.session import run_connected

from .support import CuttableProxy, agent_options, db_counts, make_server, plugin_env

pytestmark = pytest.mark.anyio


def chatter_spec(samples: int, lines: int, duration: float) -> str:
    return f"params:\n  Chatter: {{samples: {samples}, lines: {lines}, duration_s: {duration}}}\n"


async def until(predicate, timeout: float, what: str, step: float = 0.1) -> None:
    with anyio.fail_after(timeout):
        while not await anyio.to_thread.run_sync(predicate):
            await anyio.sleep(step)


def spool_counts(spool_dir: Path, run_id: int) -> dict[str, int]:
    with sqlite3.connect(spool_dir / f"run-{run_id}.sqlite") as conn:
        rows = dict(conn.execute("SELECT kind, sum(items) FROM outbox GROUP BY kind").fetchall())
        retried = conn.execute("SELECT count(*) FROM outbox WHERE attempts > 0").fetchone()[0]
        pending = conn.execute("SELECT count(*) FROM outbox WHERE state != 'acked'").fetchone()[0]
    return {"log": rows.get("log", 0), "sensor": rows.get("sensor", 0), "retried": retried, "not_acked": pending}


async def test_kill_9_the_server_mid_run_and_restart_loses_and_duplicates_nothing(registry, tmp_path):
    srv = make_server(tmp_path, interval=0.5, timeout=30)
    await anyio.to_thread.run_sync(srv.start)
    try:
        host = srv.create_host("killme", "02:00:00:00:01:01", spec_yaml=chatter_spec(4000, 1500, 9.0))
        run_id, token = srv.start_run(host["id"], stages=["Chatter"])
        opts = agent_options(tmp_path)
        result: dict = {}

        async def agent() -> None:
            result["outcome"] = await run_connected(
                RunCoordinates(server=srv.base_url, run_id=run_id, token=token), registry, opts
            )

        with anyio.fail_after(90):
            async with anyio.create_task_group() as tg:
                tg.start_soon(agent)
                # first kill while the stage streams, after some batches were stored
                await until(lambda: db_counts(srv, run_id)["sensor"] > 300, 20, "first samples stored")
                await anyio.to_thread.run_sync(srv.kill)
                await anyio.sleep(1.5)  # the agent keeps producing, spooling, retrying
                await anyio.to_thread.run_sync(srv.start)
                # second kill near the end of the stage (the result is about to go out)
                await until(lambda: db_counts(srv, run_id)["sensor"] > 3000, 30, "most samples stored")
                await anyio.to_thread.run_sync(srv.kill)
                await anyio.sleep(1.0)
                await anyio.to_thread.run_sync(srv.start)
        outcome = result["outcome"]
        assert outcome.passed, (outcome, srv.log_tail())
        assert srv.run(run_id)["run"]["state"] == "Completed"
        counts = db_counts(srv, run_id)
        spool = spool_counts(opts.spool_dir, run_id)
        assert counts["log"] == outcome.produced["log"] == spool["log"]
        assert counts["sensor"] == outcome.produced["sensor"] == spool["sensor"]
        assert outcome.produced["sensor"] >= 4000 and outcome.produced["log"] >= 1500
        assert spool["retried"] > 0  # the outages were real: deliveries had to be retried
        assert spool["not_acked"] == 0
    finally:
        await anyio.to_thread.run_sync(srv.close)


async def test_network_cut_shorter_than_the_heartbeat_timeout_is_survived(registry, tmp_path):
    srv = make_server(tmp_path, interval=0.5, timeout=5, hold=False)
    await anyio.to_thread.run_sync(srv.start)
    proxy = CuttableProxy(srv.port)
    try:
        host = srv.create_host("cut-short", "02:00:00:00:02:01", spec_yaml=chatter_spec(600, 300, 6.0))
        run_id, token = srv.start_run(host["id"], stages=["Chatter"])
        opts = agent_options(tmp_path)
        result: dict = {}
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                await tg.start(proxy.serve)

                async def agent() -> None:
                    result["outcome"] = await run_connected(
                        RunCoordinates(server=proxy.url, run_id=run_id, token=token), registry, opts
                    )
                    tg.cancel_scope.cancel()

                tg.start_soon(agent)
                await until(lambda: db_counts(srv, run_id)["sensor"] > 50, 20, "streaming")
                proxy.cut()
                await anyio.sleep(2.5)  # < heartbeat timeout 5 s
                assert srv.run(run_id)["run"]["state"] == "Running"
                proxy.heal()
                await anyio.sleep(60)  # cancelled by the agent task when it is done
        outcome = result["outcome"]
        assert outcome.passed, outcome
        assert proxy.refused > 0  # the agent did try while the link was down
        counts = db_counts(srv, run_id)
        assert (counts["log"], counts["sensor"]) == (outcome.produced["log"], outcome.produced["sensor"])
        assert srv.run(run_id)["run"]["state"] == "Completed"
    finally:
        await anyio.to_thread.run_sync(srv.close)


async def test_network_cut_longer_than_the_heartbeat_timeout_fails_the_run_agent_lost(registry, tmp_path):
    srv = make_server(tmp_path, interval=0.5, timeout=3, hold=False)
    await anyio.to_thread.run_sync(srv.start)
    proxy = CuttableProxy(srv.port)
    try:
        host = srv.create_host("cut-long", "02:00:00:00:03:01", spec_yaml=chatter_spec(1500, 300, 15.0))
        run_id, token = srv.start_run(host["id"], stages=["Chatter"])
        opts = agent_options(tmp_path)
        result: dict = {}
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                await tg.start(proxy.serve)

                async def agent() -> None:
                    result["outcome"] = await run_connected(
                        RunCoordinates(server=proxy.url, run_id=run_id, token=token), registry, opts
                    )
                    tg.cancel_scope.cancel()

                tg.start_soon(agent)
                await until(lambda: db_counts(srv, run_id)["sensor"] > 50, 20, "streaming")
                proxy.cut()
                detail = await anyio.to_thread.run_sync(lambda: srv.wait_state(run_id, "Failed", timeout=20))
                proxy.heal()
                await anyio.sleep(60)
        assert "agent lost" in (detail["run"]["reason"] or "").lower()
        outcome = result["outcome"]
        assert not outcome.passed and outcome.state == "Failed"
        # what the agent measured before and during the cut still reached the database
        counts = db_counts(srv, run_id)
        assert (counts["log"], counts["sensor"]) == (outcome.produced["log"], outcome.produced["sensor"])
        assert outcome.produced["sensor"] < 1500 + 200  # the stage was stopped, not run to its end
    finally:
        await anyio.to_thread.run_sync(srv.close)


async def test_kill_9_the_agent_restart_resumes_from_its_spool(tmp_path):
    srv = make_server(tmp_path, interval=0.5, timeout=30)
    await anyio.to_thread.run_sync(srv.start)
    proxy = CuttableProxy(srv.port)
    spool_dir = tmp_path / "agent-spool"
    try:
        host = srv.create_host("agent-crash", "02:00:00:00:04:01", spec_yaml=chatter_spec(800, 400, 6.0))
        run_id, token = srv.start_run(host["id"], stages=["Chatter"])
        argv = [
            sys.executable, "-m", "vetting_agent.cli", "--log-format", "json", "connect",
            "--server", "PLACEHOLDER", "--run", str(run_id), "--token", token,
            "--spool-dir", str(spool_dir), "--authorized-keys", str(tmp_path / "keys"),
            "--backoff-cap", "1", "--final-wait", "20", "--no-sensors",
        ]
        env = {**os.environ, **plugin_env(tmp_path)}
        with anyio.fail_after(90):
            async with anyio.create_task_group() as tg:
                await tg.start(proxy.serve)
                argv[argv.index("PLACEHOLDER")] = proxy.url
                first = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                await until(lambda: db_counts(srv, run_id)["log"] > 20, 30, "first agent streaming")
                proxy.cut()  # batches pile up in the spool, unsent
                await anyio.sleep(1.5)
                first.send_signal(signal.SIGKILL)
                await anyio.to_thread.run_sync(first.wait)
                unsent = spool_counts(spool_dir, run_id)["not_acked"]
                assert unsent > 0, (spool_counts(spool_dir, run_id), srv.run(run_id)["run"])
                proxy.heal()
                second = await anyio.run_process(argv, env=env, check=False)
                tg.cancel_scope.cancel()
        assert second.returncode == 0, (second.stderr.decode()[-3000:], srv.log_tail(30))
        assert srv.run(run_id)["run"]["state"] == "Completed"
        spool = spool_counts(spool_dir, run_id)
        counts = db_counts(srv, run_id)
        # both agent processes' output (what reached the spool) is stored exactly once
        assert spool["not_acked"] == 0
        assert (counts["log"], counts["sensor"]) == (spool["log"], spool["sensor"])
        assert counts["sensor"] >= 800  # the re-run stage streamed its samples again
    finally:
        await anyio.to_thread.run_sync(srv.close)


async def test_a_fresh_boot_resumes_the_run_numbering_after_the_server_and_recollecting_inventory(registry, tmp_path):
    """The live image rebooted mid-run: no spool (it was on tmpfs). The new agent numbers
    its batches after what the server stored (else they would be acknowledged as
    duplicates and dropped) and re-collects the inventory for the stages still to run."""
    srv = make_server(tmp_path, interval=0.5, timeout=30)
    await anyio.to_thread.run_sync(srv.start)
    try:
        host = srv.create_host("reboot", "02:00:00:00:05:01", spec_yaml="params:\n  Sleeper: {sleep_s: 3}\n")
        run_id, token = srv.start_run(host["id"], stages=["InventoryCheck", "Sleeper", "InvEcho"])
        first_opts = agent_options(tmp_path / "boot1")
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(run_connected, RunCoordinates(server=srv.base_url, run_id=run_id, token=token),
                              registry, first_opts)
                await until(lambda: srv.run(run_id)["run"]["current_stage"] == "Sleeper", 20, "Sleeper running")
                await anyio.sleep(1.0)
                tg.cancel_scope.cancel()  # power loss
        first = sqlite3.connect(first_opts.spool_dir / f"run-{run_id}.sqlite")
        delivered = dict(first.execute("SELECT kind, sum(items) FROM outbox WHERE state='acked' GROUP BY kind").fetchall())
        # A batch in flight at the power loss may have been stored without its ack reaching
        # the spool. Batches go out in order, so the server holds the acked items plus a
        # prefix of the pending ones, never anything else.
        possible = {kind: {delivered.get(kind, 0)} for kind in ("log", "sensor")}
        for kind, items in first.execute("SELECT kind, items FROM outbox WHERE state='pending' ORDER BY id"):
            if kind in possible:
                possible[kind].add(max(possible[kind]) + items)
        first.close()
        second_opts = agent_options(tmp_path / "boot2")
        with anyio.fail_after(40):
            outcome = await run_connected(RunCoordinates(server=srv.base_url, run_id=run_id, token=token), registry,
                                          second_opts)
        assert outcome.passed, outcome
        stages = {s["name"]: s for s in srv.run(run_id)["stages"]}
        assert "cpu" in stages["InvEcho"]["summary"]["inventory_sections"]
        counts = db_counts(srv, run_id)
        for kind in ("log", "sensor"):
            assert counts[kind] - outcome.produced[kind] in possible[kind], (kind, counts, possible)
    finally:
        await anyio.to_thread.run_sync(srv.close)
