"""Ingest: group commit under concurrency, duplicates inside one group, tallies (both engines)."""

from __future__ import annotations

import anyio
import pytest

from vetting_core.model import Measurement, ThresholdRule
from vetting_core.thresholds import BUILTIN_OPERATORS, ThresholdEngine

from .conftest import sample

pytestmark = pytest.mark.anyio


async def test_concurrent_batches_and_duplicates_stored_once(env):
    run_id, tok = await env.running()
    acks = []

    async def post(seq: int) -> None:
        samples = [sample(f"2026-11-23T01:00:{i % 60:02d}.{seq:03d}Z", "Alpha", "temp", f"cpu/{i % 4}", 50.0 + (i % 45)) for i in range(50)]
        r = await env.agent("POST", f"/api/v1/runs/{run_id}/sensor", tok, json={"seq": seq, "samples": samples})
        assert r.status_code == 200, r.text
        acks.append(r.json())

    async with anyio.create_task_group() as tg:
        for seq in list(range(1, 21)) + list(range(1, 21, 2)):  # every odd batch twice, concurrently
            tg.start_soon(post, seq)
    new = [a for a in acks if not a["duplicate"]]
    assert len(new) == 20 and sum(a["stored"] for a in new) == 1000
    assert sum(1 for a in acks if a["duplicate"]) == 10
    d = await env.detail(run_id)
    assert d["measurement_count"] == 1000
    temp_rule = [t for t in d["thresholds"] if t["kind"] == "temp"][0]
    tallies = [t for t in d["tallies"] if t["threshold_id"] == temp_rule["id"]]
    assert sum(t["passed"] + t["breaches"] for t in tallies) == 1000
    breaches = sum(t["breaches"] for t in tallies)  # values ≥ 90 breach "lt 90"
    assert breaches == d["breach_count"] == sum(a["breaches"] for a in new) == 20 * 5
    assert max(t["max_observed"] for t in tallies) == 94.0


def test_chunk_tallies_equal_the_exact_loop():
    from vetting_server.db.database import epoch
    from vetting_server.ingest.writer import Ingest

    ops = {o.name: o for o in BUILTIN_OPERATORS}
    rules = [
        ThresholdRule(id=1, kind="temp", key="cpu/*", op="lt", threshold=80.0),
        ThresholdRule(id=2, stage="B*", kind="temp", key="*", op="gte", threshold=10.0),
        ThresholdRule(id=3, kind="count", key="*", op="delta_lte", threshold=2.0),
        ThresholdRule(id=4, kind="state", key="*", op="regex", threshold="^ok$"),
    ]
    from datetime import UTC, datetime, timedelta

    t0 = datetime(2026, 11, 23, tzinfo=UTC)
    samples = []
    for i in range(500):
        stage = "Beta" if i % 3 else "Alpha"
        samples.append(Measurement(ts=t0 + timedelta(seconds=(i * 7) % 50), stage=stage, kind="temp", key=f"cpu/{i % 5}",
                                   value=float(i % 100) if i % 11 else None))
        samples.append(Measurement(ts=t0 + timedelta(seconds=i), stage=stage, kind="count", key="ecc", value=float(i // 100)))
        samples.append(Measurement(ts=t0, stage=stage, kind="state", key="link", value=None, text="ok" if i % 4 else "down"))
    ev = ThresholdEngine(rules, ops).evaluate(samples)
    engine = ThresholdEngine(rules, ops)  # a fresh one: counter baselines start over
    lean = engine.evaluate(samples, per_sample=False)
    assert lean.evaluations == [] and lean.breaches == ev.breaches
    ing = Ingest.__new__(Ingest)
    ing.dialect = "sqlite"
    ing._ts = epoch
    _rows, _evals, tallies = ing.sample_rows(7, samples, lean, engine, {"Alpha": 1, "Beta": 2})
    fast = sorted(tallies, key=repr)
    assert fast == sorted(_exact_tallies(7, samples, ev, engine), key=repr)
    assert sum(t[4] + t[5] for t in fast) == len(ev.evaluations) == 500 + 333 + 500 + 500  # rule 2: the 333 Beta temps


def _exact_tallies(run_id, samples, ev, engine):
    """The reference: one pass over every per-sample evaluation."""
    from vetting_server.db.database import epoch

    agg = {}
    for rule_i, si, obs, ok in ev.evaluations:
        s = samples[si]
        a = agg.setdefault((engine.rules[rule_i].id, s.stage, s.key), [0, 0, [], []])
        a[0 if ok else 1] += 1
        if isinstance(obs, float) and obs == obs and obs not in (float("inf"), float("-inf")):
            a[2].append(obs)
        a[3].append(s.ts)
    return [
        (run_id, rid, stage, key, p, b, min(nums) if nums else None, max(nums) if nums else None,
         epoch(min(tss)), epoch(max(tss)))
        for (rid, stage, key), (p, b, nums, tss) in agg.items()
    ]


# -- the SQLite writer process ------------------------------------------------------------

async def _sqlite_schema(tmp_path):
    from vetting_server.db.database import connect_database
    from vetting_server.db.migrate import migrate

    url = f"sqlite:///{tmp_path / 'w.db'}"
    db = connect_database(url, busy_timeout_ms=5000, pool_min=1, pool_max=1)
    await db.open()
    await migrate(db)
    async with db.transaction() as tx:
        await tx.execute("INSERT INTO hosts (name, mac, created_at, updated_at) VALUES ('h', 'aa:bb:cc:00:00:01', 'x', 'x')")
        await tx.execute(
            "INSERT INTO runs (host_id, state, agent_token_hash, non_destructive, started_at, state_changed_at) "
            "VALUES (1, 'Running', 't', 1, 'x', 'x')"
        )
    return db


def _item(run_id, seq, n=3):
    rows = [(run_id, None, 1.7e9 + i, "temp", f"cpu/{i}", 40.0 + i, "C", None) for i in range(n)]
    return (run_id, "sensor", seq, 0, rows, [], [], f"digest-{seq}")


async def test_writer_process_commits_dedups_reports_errors_and_survives_a_kill(tmp_path):
    from vetting_server.ingest.sqlite import WriterGone, WriterProcess

    db = await _sqlite_schema(tmp_path)
    w = WriterProcess(str(db.path), 5000)
    try:
        assert w.write([_item(1, 1), _item(1, 2)], "2026-12-01T00:00:00Z") == ([False, False], 6)
        assert w.write([_item(1, 2), _item(1, 3)], "2026-12-01T00:00:01Z") == ([True, False], 3)  # a retried batch
        # a foreign key violation rolls the whole group back and says why; the process lives on
        with pytest.raises(Exception, match="FOREIGN KEY"):
            w.write([_item(1, 4), _item(99, 1)], "2026-12-01T00:00:02Z")
        pid = w.proc.pid
        assert w.write([_item(1, 4)], "2026-12-01T00:00:03Z") == ([False], 3) and w.proc.pid == pid
        # killed between groups: the next group starts a new process
        w.proc.kill()
        w.proc.wait()
        assert w.write([_item(1, 5)], "2026-12-01T00:00:04Z") == ([False], 3) and w.proc.pid != pid
        # killed mid-group: that group fails with the reason, the next one goes through
        import signal

        w.proc.send_signal(signal.SIGSTOP)
        dead = w.proc

        async def kill_soon():
            await anyio.sleep(0.3)
            dead.kill()

        async with anyio.create_task_group() as tg:
            tg.start_soon(kill_soon)
            with pytest.raises(WriterGone, match="failed mid-group"):
                await anyio.to_thread.run_sync(w.write, [_item(1, 6)], "2026-12-01T00:00:05Z")
        assert w.write([_item(1, 6)], "2026-12-01T00:00:06Z") == ([False], 3)
        rows = await db.fetch("SELECT count(*) AS n FROM measurements")
        assert rows[0]["n"] == 6 * 3  # batches 1..6 once each, nothing from the rolled-back group twice
    finally:
        proc = w.proc
        w.close()
        await db.close()
    assert proc is None or proc.poll() is not None


async def test_writer_process_two_groups_in_flight(tmp_path):
    """Two callers at once (the server sends a group while the process commits the one
    before): each gets its own group's reply, in the order they were sent; a process
    killed with both in flight fails both, and the next group starts a new one."""
    import signal

    from vetting_server.ingest.sqlite import WriterGone, WriterProcess

    db = await _sqlite_schema(tmp_path)
    w = WriterProcess(str(db.path), 5000)
    warm_up = iter(range(100, 200))

    async def two_at_once(groups, then):
        """Send ``groups`` while the process is stopped (both are pending), then ``then()``."""
        w.write([_item(1, next(warm_up))], "x")  # a live process to stop
        w.proc.send_signal(signal.SIGSTOP)
        out = [None] * len(groups)

        async def one(i):
            try:
                out[i] = await anyio.to_thread.run_sync(w.write, groups[i], f"2026-12-05T00:00:0{i}Z")
            except Exception as exc:
                out[i] = exc

        async with anyio.create_task_group() as tg:
            for i in range(len(groups)):
                tg.start_soon(one, i)
                with anyio.fail_after(10):
                    while len(w._chan.pending) < i + 1:  # sent in this order
                        await anyio.sleep(0.01)
            then()
        return out

    try:
        # the second group retries the first one's batch 1: a duplicate only if it went second
        first, second = await two_at_once(
            [[_item(1, 1), _item(1, 2)], [_item(1, 1), _item(1, 3)]], lambda: w.proc.send_signal(signal.SIGCONT)
        )
        assert first == ([False, False], 6) and second == ([True, False], 3)
        pid = w.proc.pid
        lost = await two_at_once([[_item(1, 4)], [_item(1, 5)]], w.proc.kill)
        assert all(isinstance(e, WriterGone) and "failed mid-group" in str(e) for e in lost), lost
        assert w.write([_item(1, 4), _item(1, 5)], "x") == ([False, False], 6) and w.proc.pid != pid
        rows = await db.fetch("SELECT count(*) AS n FROM measurements")
        assert rows[0]["n"] == 5 * 3 + 2 * 3  # batches 1..5 and the two warm-up batches
    finally:
        w.close()
        await db.close()


async def test_writer_process_stores_numeric_and_text_samples_of_one_group_exactly(tmp_path):
    """Numeric samples go in without the text column, the rest with it (ingest/sqlite.py)."""
    from vetting_server.ingest.sqlite import WriterProcess

    db = await _sqlite_schema(tmp_path)
    sent = [
        (1, None, 1.7e9, "temp", "cpu/0", 41.5, "C", None),
        (1, None, 1.7e9 + 1, "state", "link", None, "", "down"),
        (1, None, 1.7e9 + 2, "temp", "cpu/1", None, "C", None),  # an unreadable sensor: no value, no text
        (1, None, 1.7e9 + 3, "fw", "bios", 2.0, "", "2.0.1"),
    ]
    w = WriterProcess(str(db.path), 5000)
    try:
        assert w.write([(1, "sensor", 1, 0, sent[:2], [], [], "a"), (1, "sensor", 2, 0, sent[2:], [], [], "b")], "x") == ([False, False], 4)
    finally:
        w.close()
    got = await db.fetch("SELECT run_id, stage_id, ts, kind, key, value, unit, text FROM measurements ORDER BY ts")
    await db.close()
    assert [tuple(r.values()) for r in got] == sent


async def test_server_stops_its_writer_process(tmp_path, test_registry):
    from vetting_server.app import create_app

    from .conftest import Env, create_operator_token, make_settings, serve_in_process

    app = create_app(make_settings(f"sqlite:///{tmp_path / 'v.db'}", tmp_path), registry=test_registry)
    async with serve_in_process(app) as client:
        env = Env(app, client, await create_operator_token(app.state.rt))
        run_id, tok = await env.running()
        r = await env.agent("POST", f"/api/v1/runs/{run_id}/sensor", tok,
                            json={"seq": 1, "samples": [sample("2026-11-23T01:00:00Z", "Alpha", "temp", "cpu/0", 50.0)]})
        assert r.status_code == 200 and r.json()["stored"] == 1, r.text
        proc = app.state.rt.ingest._writer.proc
        assert proc is not None and proc.poll() is None
    assert proc.poll() is not None, "the writer process outlived the server"


async def test_in_process_writer_when_the_process_is_switched_off(tmp_path, test_registry):
    from vetting_server.app import create_app

    from .conftest import Env, create_operator_token, make_settings, serve_in_process

    settings = make_settings(f"sqlite:///{tmp_path / 'v.db'}", tmp_path, database={"writer_process": False})
    app = create_app(settings, registry=test_registry)
    async with serve_in_process(app) as client:
        env = Env(app, client, await create_operator_token(app.state.rt))
        run_id, tok = await env.running()
        body = {"seq": 1, "samples": [sample("2026-11-23T01:00:00Z", "Alpha", "temp", "cpu/0", 50.0)] * 3}
        first = await env.agent("POST", f"/api/v1/runs/{run_id}/sensor", tok, json=body)
        again = await env.agent("POST", f"/api/v1/runs/{run_id}/sensor", tok, json=body)
        assert first.json()["stored"] == 3 and again.json()["duplicate"] is True
        assert app.state.rt.ingest._writer is None
        assert (await env.detail(run_id))["measurement_count"] == 3
