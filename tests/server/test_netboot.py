"""``GET /ipxe/{mac}`` (the per-MAC script and its run token, once per boot window), the
hello that binds the token, and the boot files served with range requests (both engines)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from vetting_server.pxe.bootfiles import parse_range
from vetting_server.db.database import utcnow

pytestmark = pytest.mark.anyio

KERNEL = bytes(range(256)) * 64  # 16 KiB, every byte position distinguishable
INITRD = b"070701" + b"\x00" * 5000


@pytest.fixture
def settings_overrides(tmp_path):
    (tmp_path / "vmlinuz").write_bytes(KERNEL)
    (tmp_path / "initrd.img").write_bytes(INITRD)
    return {
        "pxe": {"kernel_path": str(tmp_path / "vmlinuz"), "initrd_path": str(tmp_path / "initrd.img"),
                "cmdline_extra": "console=ttyS0"},
        # one run boots at a time: a second host's run stays Queued
        "dispatcher": {"concurrency": 1},
    }


async def booting(env, name="px1", mac="aa:bb:cc:00:02:01"):
    host = await env.create_host(name, mac)
    run_id, token = await env.start_run(host["id"])
    await env.wait_state(run_id, "Booting")  # the manual provider "powered it on": the window is open
    return host, run_id, token


async def events(env, run_id, kind):
    return [e for e in (await env.op("GET", f"/api/v1/runs/{run_id}/events")).json() if e["kind"] == kind]


async def test_the_script_boots_the_servers_own_image_with_a_named_initrd(env):
    _, run_id, old = await booting(env)
    r = await env.client.get("/ipxe/AA-BB-CC-00-02-01")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert r.headers["cache-control"] == "no-store"
    lines = r.text.splitlines()
    assert lines[0] == "#!ipxe"
    kernel = next(ln for ln in lines if ln.startswith("kernel "))
    token = kernel.split("vetting.token=")[1].split()[0]
    assert kernel == (f"kernel http://testserver/pxe/vmlinuz initrd=initrd.img console=ttyS0 vetting.server=http://testserver "
                      f"vetting.run={run_id} vetting.token={token} || goto failed")
    assert "initrd --name initrd.img http://testserver/pxe/initrd.img || goto failed" in lines
    assert lines.index("boot || goto failed") > lines.index(next(ln for ln in lines if ln.startswith("initrd ")))
    # the script's token replaced the one the API showed when the run started
    hello = {"agent_version": "t", "hostname": "px1", "mode": "pxe", "boot_id": "b1"}
    assert (await env.agent("POST", f"/api/v1/runs/{run_id}/hello", old, json=hello)).status_code == 401
    assert (await env.agent("POST", f"/api/v1/runs/{run_id}/hello", token, json=hello)).status_code == 200
    served = await events(env, run_id, "boot")
    assert served and served[0]["data"] == {"mac": "aa:bb:cc:00:02:01", "peer": "127.0.0.1"}
    assert (await env.client.get("/ipxe/aa:bb:cc:00:02:01")).status_code == 404  # booted: nothing to hand out


async def test_the_token_is_handed_out_once_per_window_and_refusals_are_audited(env):
    _, run_id, _ = await booting(env)
    assert (await env.client.get("/ipxe/aa:bb:cc:00:02:01")).status_code == 200
    r = await env.client.get("/ipxe/aa:bb:cc:00:02:01")
    assert r.status_code == 409
    assert "already handed out in this boot window (to 127.0.0.1)" in r.json()["detail"]
    refused = await events(env, run_id, "audit.ipxe_refused")
    assert len(refused) == 1 and refused[0]["data"]["peer"] == "127.0.0.1" and refused[0]["data"]["reason"] == "served"
    # an unauthenticated route cannot fill the events table: one audit a minute per reason
    for _ in range(5):
        assert (await env.client.get("/ipxe/aa:bb:cc:00:02:01")).status_code == 409
    assert len(await events(env, run_id, "audit.ipxe_refused")) == 1
    # a MAC nobody registered, a malformed one
    assert (await env.client.get("/ipxe/aa:bb:cc:00:09:09")).status_code == 404
    r = await env.client.get("/ipxe/not-a-mac")
    assert r.status_code == 422 and r.json()["extra"] == {"field": "mac"}


async def test_no_token_outside_the_boot_window(env):
    _, run_id, _ = await booting(env)
    # a second host's run waits in the queue (concurrency 1): its window never opened
    other = await env.create_host("px2", "aa:bb:cc:00:02:02")
    queued, _ = await env.start_run(other["id"])
    assert (await env.detail(queued))["run"]["state"] == "Queued"
    r = await env.client.get("/ipxe/aa:bb:cc:00:02:02")
    assert r.status_code == 403 and "boot window of run" in r.json()["detail"]
    # the first run's window passes (as if boot.window_s went by)
    await env.rt.db.execute("UPDATE runs SET boot_window_until = $2 WHERE id = $1", run_id, utcnow() - timedelta(seconds=1))
    r = await env.client.get("/ipxe/aa:bb:cc:00:02:01")
    assert r.status_code == 403 and "is closed" in r.json()["detail"]
    assert (await events(env, run_id, "audit.ipxe_refused"))[0]["data"]["reason"] == "closed"


async def test_without_a_live_image_the_script_is_refused_and_no_token_is_spent(env):
    _, run_id, _ = await booting(env)
    pxe = env.rt.settings.pxe
    saved = pxe.kernel_path
    pxe.kernel_path = ""
    try:
        r = await env.client.get("/ipxe/aa:bb:cc:00:02:01")
        assert r.status_code == 503 and "pxe.kernel_path" in r.json()["detail"]
    finally:
        pxe.kernel_path = saved
    assert (await env.client.get("/ipxe/aa:bb:cc:00:02:01")).status_code == 200  # the window still holds its token


async def test_the_first_hello_binds_the_token(env):
    host = await env.create_host("px1", "aa:bb:cc:00:02:01")
    run_id, token = await env.start_run(host["id"])
    first = {"agent_version": "t", "hostname": "px1", "boot_id": "boot-aaaa"}
    assert (await env.agent("POST", f"/api/v1/runs/{run_id}/hello", token, json=first)).status_code == 200
    # the same agent again (a restart within the same boot): accepted
    assert (await env.agent("POST", f"/api/v1/runs/{run_id}/hello", token, json=first)).status_code == 200
    # a copy of the token in another machine (another boot): refused and audited
    r = await env.agent("POST", f"/api/v1/runs/{run_id}/hello", token, json={**first, "boot_id": "boot-bbbb", "hostname": "evil"})
    assert r.status_code == 409 and "bound to the agent that said hello first (boot boot-aaaa from 127.0.0.1)" in r.json()["detail"]
    refused = await events(env, run_id, "audit.hello_refused")
    assert refused and refused[0]["data"]["boot_id"] == "boot-bbbb" and refused[0]["data"]["peer"] == "127.0.0.1"
    assert await env.rt.db.fetchval("SELECT agent_hostname FROM runs WHERE id = $1", run_id) == "px1"


def test_range_headers():
    assert parse_range(None, 100) is None
    assert parse_range("bytes=0-9", 100) == (0, 9)
    assert parse_range("bytes=90-", 100) == (90, 99)
    assert parse_range("bytes=-10", 100) == (90, 99)
    assert parse_range("bytes=95-200", 100) == (95, 99)
    assert parse_range("bytes=0-1,5-6", 100) is None  # several ranges: the whole file
    assert parse_range("items=0-1", 100) is None
    for bad in ("bytes=100-", "bytes=5-2", "bytes=-0"):
        with pytest.raises(ValueError):
            parse_range(bad, 100)


async def test_boot_files_are_served_with_ranges(env):
    r = await env.client.get("/pxe/vmlinuz")
    assert r.status_code == 200 and r.content == KERNEL
    assert r.headers["content-length"] == str(len(KERNEL)) and r.headers["accept-ranges"] == "bytes"
    etag = r.headers["etag"]
    r = await env.client.get("/pxe/vmlinuz", headers={"Range": "bytes=1000-1999"})
    assert r.status_code == 206 and r.content == KERNEL[1000:2000]
    assert r.headers["content-range"] == f"bytes 1000-1999/{len(KERNEL)}"
    r = await env.client.get("/pxe/vmlinuz", headers={"Range": "bytes=-100"})
    assert r.status_code == 206 and r.content == KERNEL[-100:]
    r = await env.client.get("/pxe/vmlinuz", headers={"Range": f"bytes={len(KERNEL)}-"})
    assert r.status_code == 416 and r.headers["content-range"] == f"bytes */{len(KERNEL)}"
    # a resumed download of a file that changed gets the whole new file
    r = await env.client.get("/pxe/vmlinuz", headers={"Range": "bytes=10-", "If-Range": '"stale"'})
    assert r.status_code == 200 and r.content == KERNEL
    r = await env.client.get("/pxe/vmlinuz", headers={"Range": "bytes=10-", "If-Range": etag})
    assert r.status_code == 206 and r.content == KERNEL[10:]
    assert (await env.client.get("/pxe/initrd.img")).content == INITRD
    r = await env.client.get("/pxe/passwd")
    assert r.status_code == 404 and "kernel_path" in r.json()["detail"]
    assert (await env.client.get("/pxe/..%2f..%2fetc%2fpasswd")).status_code == 404
