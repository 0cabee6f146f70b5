"""The orchestrator's pool of iperf3 peers, leased through the agent API: real iperf3
servers, a real iperf3 client, on both engines."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from vetting_core.config import ConfigError, parse_ports, settings_from_dict

from .conftest import Env, create_operator_token, make_settings, serve_in_process

pytestmark = pytest.mark.anyio


def free_ports(n: int) -> list[int]:
    import socket

    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


async def _env(database_url, tmp_path, registry, **peers):
    from vetting_server.app import create_app

    return create_app(make_settings(database_url, tmp_path, peers={"bind": "127.0.0.1", **peers}), registry=registry)


async def test_lease_run_iperf3_and_release(database_url, tmp_path, test_registry):
    assert shutil.which("iperf3"), "iperf3 is a test dependency (.ci/debian-packages.txt)"
    (port,) = free_ports(1)
    app = await _env(database_url, tmp_path, test_registry, iperf3_ports=str(port), wait_s=0.5, host="127.0.0.1")
    async with serve_in_process(app) as client:
        env = Env(app, client, await create_operator_token(app.state.rt))
        run_a, tok_a = await env.running()
        run_b, tok_b = await env.running("node2", "aa:bb:cc:00:00:02")

        r = await env.agent("POST", f"/api/v1/runs/{run_a}/peer", tok_a, json={"kind": "iperf3", "stage": "Alpha"})
        assert r.status_code == 200, r.text
        lease = r.json()
        assert (lease["host"], lease["port"], lease["kind"]) == ("127.0.0.1", port, "iperf3")
        assert lease["expires_in_s"] == 900

        # one client per port: the only port is leased, so run B is told to retry later
        busy = await env.agent("POST", f"/api/v1/runs/{run_b}/peer", tok_b, json={"kind": "iperf3"})
        assert busy.status_code == 503 and busy.headers["retry-after"]
        assert "every iperf3 port is leased" in busy.json()["detail"]

        # the leased server is real: an iperf3 client completes a test against it
        out = subprocess.run(["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", "1", "-J"],
                             capture_output=True, text=True, timeout=60)
        report = json.loads(out.stdout)
        assert "error" not in report and report["end"]["sum_received"]["bits_per_second"] > 0

        # another run cannot give back run A's lease; run A can, once
        r = await env.agent("POST", f"/api/v1/runs/{run_b}/peer/release", tok_b, json={"lease_id": lease["lease_id"]})
        assert r.json() == {"released": False}
        r = await env.agent("POST", f"/api/v1/runs/{run_a}/peer/release", tok_a, json={"lease_id": lease["lease_id"]})
        assert r.json() == {"released": True}
        r = await env.agent("POST", f"/api/v1/runs/{run_a}/peer/release", tok_a, json={"lease_id": lease["lease_id"]})
        assert r.json() == {"released": False}

        # the port is free again: run B gets it
        r = await env.agent("POST", f"/api/v1/runs/{run_b}/peer", tok_b, json={"kind": "iperf3"})
        assert r.status_code == 200 and r.json()["port"] == port

        unknown = await env.agent("POST", f"/api/v1/runs/{run_a}/peer", tok_a, json={"kind": "netperf"})
        assert unknown.status_code == 404 and "offers: iperf3" in unknown.json()["detail"]
        no_token = await env.agent("POST", f"/api/v1/runs/{run_a}/peer", None, json={"kind": "iperf3"})
        assert no_token.status_code == 401


async def test_expired_leases_are_reaped(database_url, tmp_path, test_registry):
    (port,) = free_ports(1)
    app = await _env(database_url, tmp_path, test_registry, iperf3_ports=str(port), lease_timeout_s=1, wait_s=0.1)
    async with serve_in_process(app) as client:
        env = Env(app, client, await create_operator_token(app.state.rt))
        run_id, tok = await env.running()
        r = await env.agent("POST", f"/api/v1/runs/{run_id}/peer", tok, json={"kind": "iperf3"})
        assert r.status_code == 200
        peers = app.state.rt.peers
        await peers.reap()
        assert len(peers.leases) == 1  # not expired yet
        import anyio

        await anyio.sleep(1.1)
        await peers.reap()
        assert peers.leases == {} and peers.pool.in_use == []
        r = await env.agent("POST", f"/api/v1/runs/{run_id}/peer", tok, json={"kind": "iperf3"})
        assert r.status_code == 200  # the reaped port is leased again


async def test_a_pool_turned_off_says_so(database_url, tmp_path, test_registry):
    app = await _env(database_url, tmp_path, test_registry, iperf3_ports="")
    async with serve_in_process(app) as client:
        env = Env(app, client, await create_operator_token(app.state.rt))
        run_id, tok = await env.running()
        r = await env.agent("POST", f"/api/v1/runs/{run_id}/peer", tok, json={"kind": "iperf3"})
        assert r.status_code == 404 and "peers.iperf3_ports is empty" in r.json()["detail"]


def test_port_ranges_are_validated():
    assert parse_ports("5201-5203, 5300") == [5201, 5202, 5203, 5300]
    assert parse_ports("") == []
    for bad, why in (("52o1", "'52o1' is not a port"), ("5210-5201", "between 1 and 65535"), ("0-3", "between 1 and 65535")):
        with pytest.raises(ConfigError, match=r"\$\.peers\.iperf3_ports: .*" + why):
            settings_from_dict({"peers": {"iperf3_ports": bad}})


async def test_blocking_the_network_plugin_removes_the_peer_pool(database_url, tmp_path):
    """The iperf3 pool is the ``network`` plugin's (``vetting_peer_pools``): with the
    plugin blocked the orchestrator has no pool, says why, and never loads its code."""
    from vetting_core.plugins import load_registry

    from . import server_plugin

    (port,) = free_ports(1)
    with_network = load_registry(plugins=[("server-test", server_plugin)], environ={})
    assert with_network.owner("peer_pools", "iperf3") == "network"
    blocked = load_registry(blocked=["network"], plugins=[("server-test", server_plugin)], environ={})
    assert blocked.peer_pools == {} and "network" in blocked.blocked
    app = await _env(database_url, tmp_path, blocked, iperf3_ports=str(port))
    async with serve_in_process(app) as client:
        env = Env(app, client, await create_operator_token(app.state.rt))
        assert app.state.rt.peers.pool is None
        run_id, tok = await env.running()
        r = await env.agent("POST", f"/api/v1/runs/{run_id}/peer", tok, json={"kind": "iperf3"})
        assert r.status_code == 404 and "the network plugin is blocked" in r.json()["detail"]


def test_a_server_with_the_network_plugin_blocked_does_not_import_it(tmp_path):
    """In a fresh interpreter: the app is built and no module of the Network plugin
    (its iperf3 pool included) is imported."""
    import sys

    code = (
        "import sys\n"
        "from vetting_core.config import settings_from_dict\n"
        "from vetting_server.app import create_app\n"
        f"s = settings_from_dict({{'server': {{'data_dir': {str(tmp_path)!r}}}, 'database': {{'url': 'sqlite:///{tmp_path}/v.db'}},"
        " 'peers': {'iperf3_ports': '5201'}, 'plugins': {'disable': ['network']}})\n"
        "app = create_app(s)\n"
        "assert app.state.rt.peers.pool is None, 'a pool without its plugin'\n"
        "print(sorted(m for m in sys.modules if m.startswith('vetting_stages.network')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
