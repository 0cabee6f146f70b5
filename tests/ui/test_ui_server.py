"""The web UI's server side without a browser: sessions, login limits, runtime settings,
the log stream's resumption, spec ignores in run planning, headers (SQLite and PostgreSQL)."""

from __future__ import annotations

import re
from datetime import timedelta

import msgspec
import pytest

from vetting_server.db.database import utcnow
from vetting_server.security import hash_password
from vetting_server.settings_service import RuntimeSettings, SettingError
from vetting_server.ui.ansi import ansi_html
from vetting_server.ui.inventory_diff import inventory_diff

pytestmark = pytest.mark.anyio

PASSWORD = "correct horse battery"


async def add_user(env, name: str = "alice") -> None:
    await env.rt.db.execute("INSERT INTO users (name, password_hash, created_at, disabled) VALUES ($1, $2, $3, $4)",
                            name, hash_password(PASSWORD), utcnow(), False)


async def login(env, name: str = "alice", password: str = PASSWORD):
    """Log in through the form as a browser does; returns the response to the POST."""
    c = env.client
    form = await c.get("/login")
    token = re.search(r'name="_csrf" value="([^"]+)"', form.text)[1]
    c.cookies.set("__Host-vetting-login", token)
    r = await c.post("/login", data={"username": name, "password": password, "_csrf": token, "next": "/"})
    if r.status_code == 303:
        c.cookies.set("__Host-vetting-session", re.search(r"__Host-vetting-session=([^;]+)", r.headers["set-cookie"])[1])
    return r


async def sse_blocks(env, path: str, until, timeout: float = 10.0) -> list[str]:
    """The blocks of an endless event stream, read straight from the ASGI app (httpx's
    ASGI transport waits for a response's end) until one satisfies ``until``."""
    import anyio

    cookie = "; ".join(f"{c.name}={c.value}" for c in env.client.cookies.jar if c.name.startswith("__Host-vetting-session"))
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": path.split("?")[0], "raw_path": path.split("?")[0].encode(), "query_string": path.partition("?")[2].encode(),
             "headers": [(b"host", b"testserver"), (b"cookie", cookie.encode())], "client": ("127.0.0.1", 1),
             "server": ("testserver", 80), "state": {}}
    blocks: list[str] = []
    text = ""
    done = anyio.Event()

    async def receive() -> dict:
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        nonlocal text
        if message["type"] == "http.response.start":
            assert message["status"] == 200, message
        elif message["type"] == "http.response.body":
            text += message.get("body", b"").decode()
            *whole, text = text.replace("\r\n", "\n").split("\n\n")
            blocks.extend(b for b in whole if b.strip())
            if any(until(b) for b in blocks):
                done.set()

    with anyio.fail_after(timeout):
        async with anyio.create_task_group() as tg:
            tg.start_soon(env.app, scope, receive, send)
            await done.wait()
            tg.cancel_scope.cancel()
    return blocks


def csrf(html: str) -> str:
    return re.search(r'"X-CSRF-Token": "([^"]+)"', html)[1]


async def test_a_session_ends_when_idle_too_long_after_its_absolute_limit_and_when_the_operator_is_disabled(env):
    await add_user(env)
    assert (await login(env)).status_code == 303
    c, db = env.client, env.rt.db
    assert (await c.get("/")).status_code == 200
    past = utcnow() - timedelta(seconds=1)
    for column in ("idle_until", "expires_at"):
        await db.execute(f"UPDATE ui_sessions SET {column} = $1", past)
        r = await c.get("/audit")
        assert r.status_code == 303 and r.headers["location"] == "/login?next=/audit", column
        await db.execute(f"UPDATE ui_sessions SET {column} = $1", utcnow() + timedelta(hours=1))
        assert (await c.get("/audit")).status_code == 200
    # a use more than a minute after the last one pushes the idle deadline, never past the absolute one
    expires = utcnow() + timedelta(minutes=5)
    await db.execute("UPDATE ui_sessions SET last_seen_at = $1, idle_until = $2, expires_at = $3",
                     utcnow() - timedelta(minutes=2), utcnow() + timedelta(seconds=30), expires)
    assert (await c.get("/")).status_code == 200
    row = await db.fetchrow("SELECT idle_until, expires_at FROM ui_sessions")
    from vetting_server.db.database import as_dt

    assert as_dt(row["idle_until"]) == as_dt(row["expires_at"]) == expires.replace(microsecond=expires.microsecond)
    await db.execute("UPDATE users SET disabled = $1", True)
    assert (await c.get("/")).status_code == 303
    # an htmx request is told where to go instead of being handed the login page
    r = await c.get("/ui/tiles", headers={"HX-Request": "true", "HX-Current-URL": "http://testserver/?state=idle"})
    assert r.status_code == 200 and r.headers["hx-redirect"] == "/login?next=/"


@pytest.fixture
def settings_overrides():
    return {"login": {"free_attempts": 2, "backoff_s": 30}}


async def test_the_login_form_shares_the_api_accounts_and_rate_limit(env):
    await add_user(env)
    for _ in range(2):
        r = await login(env, password="wrong")
        assert r.status_code == 401 and "Wrong user name or password." in r.text
    r = await login(env)  # the right password, but the name is backing off
    assert r.status_code == 429 and "too many failed logins for &#39;alice&#39;" in r.text
    api = await env.client.post("/api/v1/auth/token", json={"username": "alice", "password": PASSWORD})
    assert api.status_code == 429  # one counter for both doors
    events = await env.rt.db.fetch("SELECT kind, data_json FROM events WHERE kind = 'audit.login_failed'")
    assert events and "alice" in events[0]["data_json"]
    # a form without its login token is refused before any password is checked
    r = await env.client.post("/login", data={"username": "alice", "password": PASSWORD, "_csrf": "forged"})
    assert r.status_code == 403


async def test_runtime_settings_are_validated_like_the_file_stored_audited_and_in_force(env, tmp_path):
    rt = env.rt
    svc = rt.runtime_settings
    with pytest.raises(SettingError, match=r"Expected `float`, got `str` - at `\$\.retention\.logs_days`"):
        await svc.change("retention.logs_days", svc.parse("retention.logs_days", "a week"), actor="alice")
    with pytest.raises(SettingError, match=r"unknown target 'pager'"):
        await svc.change("notifications.routes", svc.parse("notifications.routes", "- targets: [pager]"), actor="alice")
    with pytest.raises(SettingError, match="no installed profile 'nightly'"):
        await svc.change("runs.default_profile", "nightly", actor="alice")
    with pytest.raises(SettingError, match="not a runtime setting"):
        svc.parse("database.url", "sqlite:///x.db")

    # in force at once: the janitor's next sweep keeps log lines one day, not thirty
    await svc.change("retention.logs_days", svc.parse("retention.logs_days", "1"), actor="alice")
    assert rt.settings.retention.logs_days == 1.0 and svc.base.retention.logs_days == 30.0
    host = await env.create_host()
    run_id, tok = await env.start_run(host["id"])
    await env.op("POST", f"/api/v1/runs/{run_id}/cancel")
    await rt.db.execute("UPDATE runs SET completed_at = $2 WHERE id = $1", run_id, utcnow() - timedelta(days=2))
    ts = utcnow() if rt.db.dialect == "postgresql" else utcnow().timestamp()
    await rt.db.execute("INSERT INTO log_lines (run_id, ts, level, message) VALUES ($1, $2, 'info', 'old')", run_id, ts)
    assert (await rt.scheduler.janitor_once())["log_lines"] == 1

    # a run started without a profile gets the default in force
    await svc.change("runs.default_profile", "srvtest", actor="alice")
    host2 = await env.create_host("node2", "aa:bb:cc:00:00:02")
    r = await env.op("POST", "/api/v1/runs", json={"host_id": host2["id"], "stages": ["Alpha"]})
    assert r.status_code == 201 and r.json()["run"]["profile"] == "srvtest", r.text

    # another server process on the same database follows on its next load
    other = RuntimeSettings(type("Rt", (), {"settings": svc.base, "db": rt.db, "registry": rt.registry, "notifier": None})())
    await other.load()
    assert other.rt.settings.retention.logs_days == 1.0 and other.rt.settings.runs.default_profile == "srvtest"
    audit = await rt.db.fetch("SELECT data_json FROM events WHERE kind = 'audit.setting_changed' ORDER BY id")
    assert [msgspec.json.decode(a["data_json"])["key"] for a in audit] == ["retention.logs_days", "runs.default_profile"]
    await svc.reset("retention.logs_days", actor="alice")
    assert rt.settings.retention.logs_days == 30.0
    assert await rt.db.fetchval("SELECT count(*) FROM settings WHERE key = 'retention.logs_days'") == 0

    # a file that stops allowing a key: the stored value stays out of force, with the reason
    narrowed = msgspec.structs.replace(svc.base, ui=msgspec.structs.replace(svc.base.ui, overridable=["retention.logs_days"]))
    third = RuntimeSettings(type("Rt", (), {"settings": narrowed, "db": rt.db, "registry": rt.registry, "notifier": None})())
    await third.load()
    assert third.rt.settings.runs.default_profile == "quick"
    assert "does not list it in ui.overridable" in third.rejected["runs.default_profile"]
    with pytest.raises(SettingError, match="does not allow"):
        third.parse("runs.default_profile", "srvtest")


async def test_the_log_tail_resumes_after_last_event_id_and_renders_ansi_safely(env):
    await add_user(env)
    await login(env)
    run_id, tok = await env.running()
    now = utcnow().isoformat()
    lines = [[now, "Alpha", "info", f"line {i}"] for i in range(5)] + [[now, "Alpha", "error", "\x1b[31mred\x1b[0m <b>x</b>"]]
    r = await env.agent("POST", f"/api/v1/runs/{run_id}/log", tok, json={"seq": 1, "lines": lines})
    assert r.status_code == 200, r.text
    await env.op("POST", f"/api/v1/runs/{run_id}/cancel")  # over: the stream ends after the last line
    ids = [r["id"] for r in await env.rt.db.fetch("SELECT id FROM log_lines WHERE run_id = $1 ORDER BY id", run_id)]

    def events(text: str) -> list[dict[str, str]]:
        out = []
        for block in text.replace("\r\n", "\n").split("\n\n"):
            fields: dict[str, str] = {}
            for ln in block.splitlines():
                k, _, v = ln.partition(": ")
                fields[k] = fields[k] + "\n" + v if k in fields else v
            if "event" in fields:
                out.append(fields)
        return out

    whole = events((await env.client.get(f"/ui/runs/{run_id}/log")).text)
    assert [e["event"] for e in whole] == ["line", "end"] and whole[0]["id"] == str(ids[-1])
    assert whole[0]["data"].count('class="ln') == 6
    assert '<span class="a-fg-red">red</span> &lt;b&gt;x&lt;/b&gt;' in whole[0]["data"] and "\x1b" not in whole[0]["data"]
    resumed = events((await env.client.get(f"/ui/runs/{run_id}/log", headers={"Last-Event-ID": str(ids[2])})).text)
    assert resumed[0]["data"].count('class="ln') == 3 and "line 2" not in resumed[0]["data"] and "line 3" in resumed[0]["data"]
    again = events((await env.client.get(f"/ui/runs/{run_id}/log?after={ids[4]}")).text)  # a stream opened anew
    assert again[0]["data"].count('class="ln') == 1 and "red" in again[0]["data"]
    r = await env.client.get(f"/ui/runs/{run_id}/log", headers={"Last-Event-ID": "x"})
    assert r.status_code == 400


async def test_a_run_page_stream_starts_where_the_page_was_rendered(env):
    """An event written between the page's render and its stream's opening (the agent
    claims as the page loads) still reaches the page, and the stream's first block sets
    the EventSource's Last-Event-ID, so a reconnect before any event resumes from there."""
    await add_user(env)
    await login(env)
    host = await env.create_host("node1", "aa:bb:cc:00:00:01")
    run_id, tok = await env.start_run(host["id"])
    html = (await env.client.get(f"/runs/{run_id}")).text
    url = re.search(r'sse-connect="(/ui/runs/\d+/stream\?after=(\d+))"', html)
    assert url, "the run page opens its stream at the event it was rendered at"
    dash = re.search(r'sse-connect="/ui/stream\?after=(\d+)"', (await env.client.get("/")).text)
    assert dash and int(dash[1]) >= int(url[2])
    r = await env.agent("POST", f"/api/v1/runs/{run_id}/hello", tok, json={"agent_version": "t", "hostname": "node1"})
    assert r.status_code == 200, r.text  # after the render, before the stream

    blocks = await sse_blocks(env, url[1], until=lambda b: "event: run" in b)
    assert f"id: {url[2]}" in blocks[0].splitlines()
    assert any("event: run" in b for b in blocks[1:])


def test_ansi_colours_become_classes_and_every_other_sequence_is_dropped():
    html = ansi_html("\x1b[1;32mok\x1b[0m \x1b]0;pwned\x07\x1b[2J\x1b[H<img src=x onerror=alert(1)>\rtail\x9b31m")
    assert html == '<span class="a-bold a-fg-green">ok</span> &lt;img src=x onerror=alert(1)&gt;\\x0dtail'


def test_the_inventory_diff_matches_parts_by_serial_slot_and_address():
    before = {"disks": [{"serial": "S1", "path": "/dev/sda", "model": "A"}, {"serial": "S2", "path": "/dev/sdb", "model": "A"}],
              "memory": {"total_gib": 256, "dimms": [{"locator": "A1", "serial": "D1"}, {"locator": "A2", "serial": "D2"}]},
              "cpu": {"model": "X", "flags": ["sse"]}}
    after = {"disks": [{"serial": "S2", "path": "/dev/sda", "model": "A"}, {"serial": "S3", "path": "/dev/sdb", "model": "B"}],
             "memory": {"total_gib": 256, "dimms": [{"locator": "A1", "serial": "D1"}, {"locator": "A2", "serial": "D9"}]},
             "cpu": {"model": "X", "flags": ["sse", "avx"]}}
    changes = {(d["path"], d["change"]) for d in inventory_diff(before, after)}
    assert ("disks[S1].model", "removed") in changes and ("disks[S3].model", "added") in changes
    assert ("disks[S2].path", "changed") in changes  # the same disk in another bay
    assert ("memory.dimms[D2].locator", "removed") in changes and ("memory.dimms[D9].locator", "added") in changes
    assert not any(p.startswith("cpu") for p, _ in changes)


async def test_an_ignored_difference_rides_in_the_spec_of_every_later_run(env):
    host = await env.create_host(expected_spec_yaml="cpu:\n  threads: 4096\n")
    await env.rt.db.execute(
        "INSERT INTO spec_ignores (host_id, field, actual, expected, reason, created_by, created_at) "
        "VALUES ($1, 'cpu.threads', '2', '4096', 'lab box', 'alice', $2)", host["id"], utcnow())
    run_id, _ = await env.start_run(host["id"])
    spec = await env.rt.db.fetchval("SELECT expected_spec_json FROM runs WHERE id = $1", run_id)
    assert msgspec.json.decode(spec)["ignore"] == [{"field": "cpu.threads", "actual": "2"}]


async def test_pages_carry_security_headers_and_stay_out_of_the_openapi_document(env):
    await add_user(env)
    await login(env)
    r = await env.client.get("/")
    assert r.status_code == 200
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "connect-src 'self'" in csp
    assert r.headers["x-content-type-options"] == "nosniff" and r.headers["cache-control"] == "no-store"
    assert re.findall(r'(?:src|href)="([^"]+)"', r.text) and all(
        u.startswith(("/", "#")) for u in re.findall(r'(?:src|href)="([^"]+)"', r.text))
    for asset in re.findall(r'(?:src|href)="(/static/[^"]+)"', r.text):
        assert (await env.client.get(asset)).status_code == 200, asset
    doc = (await env.client.get("/schema/openapi.json")).json()
    assert not [p for p in doc["paths"] if p == "/" or p.startswith(("/ui", "/login", "/hosts", "/runs", "/settings", "/audit"))]
    # a missing run is an HTML page in the UI, a JSON error in the API
    r = await env.client.get("/runs/987654")
    assert r.status_code == 404 and "run 987654 not found" in r.text and r.headers["content-type"].startswith("text/html")
    # a settings change needs the token even with a valid session
    assert (await env.client.post("/settings/retention.logs_days", data={"value": "3"})).status_code == 403
    r = await env.client.post("/settings/retention.logs_days", data={"value": "3", "_csrf": csrf((await env.client.get("/")).text)})
    assert r.status_code == 303 and env.rt.settings.retention.logs_days == 3.0


async def test_dashboard_filters_counts_and_the_runs_that_need_a_person(env):
    await add_user(env)
    await login(env)
    db, now = env.rt.db, utcnow()
    hosts = {}
    for i, name in enumerate(("idle-1", "done-2", "held-3", "lost-4", "busy-5")):
        hosts[name] = (await env.create_host(name, f"aa:bb:cc:00:01:{i:02x}"))["id"]

    async def run(host: str, state: str, result: str | None, **extra) -> None:
        cols = {"host_id": hosts[host], "state": state, "result": result, "agent_token_hash": f"h{host}{state}",
                "non_destructive": True, "started_at": now, "state_changed_at": now, **extra}
        await db.execute(f"INSERT INTO runs ({', '.join(cols)}) VALUES ({', '.join(f'${i + 1}' for i in range(len(cols)))})",
                         *cols.values())

    await run("done-2", "Completed", "pass")
    await run("held-3", "Completed", "pass")
    await run("held-3", "FailedHolding", "fail", failed_stage="Storage", hold_expires_at=now + timedelta(hours=3))
    await run("lost-4", "Failed", "fail", reason="agent lost: no heartbeat for 61s")
    await run("busy-5", "Running", None, current_stage="CPU")

    def names(html: str) -> list[str]:
        return re.findall(r'<a href="/hosts/\d+">([^<]+)</a>', html)

    page = (await env.client.get("/")).text
    assert names(page) == ["held-3", "lost-4", "busy-5", "done-2", "idle-1"]  # people first
    assert "Needs a person (2)" in page and "waiting for override" not in page and ">held<" in page and "agent lost" in page
    assert re.search(r'data-until="[^"]+"', page)  # the hold's time left counts down
    for query, want in (("state=idle", ["idle-1"]), ("state=attention", ["held-3", "lost-4"]), ("state=Running", ["busy-5"]),
                        ("verdict=pass", ["done-2"]), ("verdict=fail", ["held-3", "lost-4"]), ("verdict=none", ["busy-5", "idle-1"]),
                        ("q=LOST", ["lost-4"]), ("q=aa:bb:cc:00:01:04", ["busy-5"]), ("state=bogus", list(names(page)))):
        assert names((await env.client.get(f"/ui/tiles?{query}")).text) == want, query
    summary = (await env.client.get("/ui/summary")).text
    assert re.search(r"held</span> <strong>1</strong>", summary) and re.search(r"idle</span> <strong>1</strong>", summary)
    tile = (await env.client.get(f"/ui/tiles/{hosts['busy-5']}")).text
    assert "Running" in tile and "CPU" in tile and f'hx-trigger="sse:host-{hosts["busy-5"]}' in tile


def test_provider_settings_show_references_and_mask_secrets():
    from vetting_server.ui.render import masked

    shown = masked({"address": "10.0.0.5", "user": "root", "password_env": "BMC_PW", "password_file": "/etc/vetting/bmc",
                    "password": "hunter2", "api_token": "t0k", "nested": {"secret": "s", "port": 623}, "key_ttl": None})
    assert shown == {"address": "10.0.0.5", "user": "root", "password_env": "BMC_PW", "password_file": "/etc/vetting/bmc",
                     "password": "••••••", "api_token": "••••••", "nested": {"secret": "••••••", "port": 623}, "key_ttl": None}
