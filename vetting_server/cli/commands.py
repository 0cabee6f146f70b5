"""The ``vetting`` command line.

Server-side commands (``serve``, ``db migrate``, ``admin create``, ``token create``)
read the configuration file (``--config``, ``$VETTING_CONFIG``, or ``./vetting.yaml``
when it exists) and work on the database directly. Client commands (``host``,
``run``) talk to a running server's API with an operator token (``--token`` or
``$VETTING_TOKEN``; ``--server`` or ``$VETTING_SERVER``, default from the config).

Litestar, Piccolo, asyncpg and httpx are imported only by the commands that need
them, so ``vetting plugins list`` starts fast.

Every error is one line on stderr naming the problem and the fix (:mod:`.cli_errors`),
with exit status 2 for a usage error and 1 for anything else; never a traceback
(``VETTING_DEBUG=1`` shows it). Listings print aligned tables; ``--json`` prints what
the API returned, for scripts.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

from vetting_core.cmdline import command_line

from .errors import USAGE, CliError, database_error, http_error


def _settings(args: argparse.Namespace) -> Any:
    from vetting_core.config import ConfigError, load_settings

    path = args.config or os.environ.get("VETTING_CONFIG")
    if path is None and Path("vetting.yaml").is_file():
        path = "vetting.yaml"
    try:
        return load_settings(path)
    except ConfigError as exc:
        raise CliError(f"{exc} (fix the configuration file or the VETTING__ variable)") from None
    except OSError as exc:
        raise CliError(f"cannot read the configuration file {path}: {exc.strerror or exc}: "
                       "pass an existing file with --config or $VETTING_CONFIG") from None


def _configure_logging(level: str = "info", fmt: str = "console") -> None:
    import logging

    import structlog

    lvl = getattr(logging, level.upper(), logging.INFO)
    logging.basicConfig(level=lvl, format="%(message)s", stream=sys.stderr)
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if fmt == "json":
        processors += [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    else:
        processors += [structlog.dev.ConsoleRenderer(colors=False)]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


# ------------------------------------------------------------------------- server side


def cmd_serve(args: argparse.Namespace) -> int:
    import msgspec

    settings = _settings(args)
    if args.host or args.port:
        server = msgspec.structs.replace(
            settings.server, host=args.host or settings.server.host, port=args.port or settings.server.port
        )
        settings = msgspec.structs.replace(settings, server=server)
    _configure_logging(settings.logging.level, settings.logging.format)
    _preflight(settings)
    import uvicorn

    from ..app import create_app
    from ..edge.serving import uvicorn_config

    app = create_app(settings)
    _tune_interpreter()
    config = uvicorn_config(app, settings)
    server = uvicorn.Server(config)
    server.run()
    return 0 if server.started else 1


def _tune_interpreter() -> None:
    """Process-wide interpreter settings for the serving process (the server's hot paths
    are measured with ``bench/ingest.py``).

    - GIL switch interval 1 ms: ingest work runs in threads (judging big batches, the
      SQLite writer's pipe); a shorter slice lets the event loop answer heartbeats
      between theirs.
    - Garbage collector: everything built at start-up (modules, the app, plugins) is
      moved out of the collector's generations (``gc.freeze``), and young collections run
      every 20,000 allocations instead of every 700. A server taking 1,000 requests a
      second otherwise runs hundreds of collections a second and, every few seconds, a
      full one that walks the whole heap while every request waits. Measured at 10,000
      agents, A/B in the same hour: heartbeat p99 during ingest 104 → 50 ms, throughput
      unchanged within the noise. Cyclic garbage is still collected, only less often.
    """
    import gc

    sys.setswitchinterval(0.001)
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 50, 50)


def _preflight(settings: Any) -> None:
    """Open the database and apply migrations before serving: a wrong URL or a down
    PostgreSQL stops start-up with one clear line instead of a traceback."""
    _with_database(settings)


def _with_db(args: argparse.Namespace, fn: Any) -> Any:
    return _with_database(_settings(args), fn)


def _with_database(settings: Any, fn: Any = None) -> Any:
    """Open the configured database, apply pending migrations, run ``await fn(db, applied)``
    (when given).
    A database that cannot be opened (driver missing, server down, no such database,
    bad file path) is one :class:`CliError` line."""
    import anyio

    from ..db.database import connect_database
    from ..db.migrate import migrate

    d = settings.database
    opened = False

    async def main() -> Any:
        nonlocal opened
        db = connect_database(d.url, busy_timeout_ms=d.busy_timeout_ms, pool_min=1, pool_max=2)
        await db.open()
        opened = True
        try:
            applied = await migrate(db)
            return None if fn is None else await fn(db, applied)
        finally:
            await db.close()

    try:
        return anyio.run(main)
    except CliError:
        raise
    except Exception as exc:
        if opened and not isinstance(exc, OSError):
            raise  # not a problem of opening the database: main() reports it
        raise database_error(d.url, exc) from None


def cmd_db_migrate(args: argparse.Namespace) -> int:
    from ..db.migrate import current_version

    async def fn(db: Any, applied: list[str]) -> int:
        version = await current_version(db)
        print(f"applied {len(applied)} migration(s){': ' + ', '.join(applied) if applied else ''}; schema version {version}")
        return 0

    return _with_db(args, fn)


async def _ensure_user(db: Any, name: str, password_hash: str | None) -> tuple[int, bool]:
    from ..db.database import utcnow

    row = await db.fetchrow("SELECT id FROM users WHERE name = $1", name)
    if row is not None:
        return int(row["id"]), False
    async with db.transaction() as tx:
        uid = await tx.fetchval(
            "INSERT INTO users (name, password_hash, created_at, disabled) VALUES ($1, $2, $3, $4) RETURNING id",
            name, password_hash, utcnow(), False,
        )
    return int(uid), True


def _read_password(args: argparse.Namespace) -> str:
    try:
        if args.password_stdin or not sys.stdin.isatty():
            line = sys.stdin.readline()
            if not line:
                raise EOFError
            pw = line.rstrip("\n")
        else:
            pw = getpass.getpass(f"password for {args.user}: ")
            if getpass.getpass("again: ") != pw:
                raise CliError("the passwords differ: type the same password twice")
    except EOFError:
        raise CliError("no password given (end of input): type it at the prompt, "
                       "or pipe it in with --password-stdin") from None
    if len(pw) < 8:
        raise CliError("the password must have at least 8 characters: choose a longer one")
    return pw


def cmd_admin_create(args: argparse.Namespace) -> int:
    from ..db.database import utcnow
    from ..security import hash_password

    pw_hash = hash_password(_read_password(args))

    async def fn(db: Any, applied: list[str]) -> int:
        row = await db.fetchrow("SELECT id FROM users WHERE name = $1", args.user)
        async with db.transaction() as tx:
            if row is None:
                await tx.execute(
                    "INSERT INTO users (name, password_hash, created_at, disabled) VALUES ($1, $2, $3, $4)",
                    args.user, pw_hash, utcnow(), False,
                )
                what = "created"
            else:
                await tx.execute("UPDATE users SET password_hash = $2 WHERE id = $1", int(row["id"]), pw_hash)
                what = "password changed"
            await tx.execute(
                "INSERT INTO events (ts, level, kind, message, actor) VALUES ($1, 'info', 'audit.admin', $2, $3)",
                utcnow(), f"operator {args.user} {what} from the command line", args.user,
            )
        print(f"operator {args.user}: {what}")
        return 0

    return _with_db(args, fn)


def cmd_token_create(args: argparse.Namespace) -> int:
    from ..db.database import utcnow
    from ..security import new_token, token_hash

    token = new_token("vo_")

    async def fn(db: Any, applied: list[str]) -> int:
        uid, created = await _ensure_user(db, args.user, None)
        async with db.transaction() as tx:
            await tx.execute(
                "INSERT INTO api_tokens (user_id, name, token_hash, created_at, revoked) VALUES ($1, $2, $3, $4, $5)",
                uid, args.name, token_hash(token), utcnow(), False,
            )
            await tx.execute(
                "INSERT INTO events (ts, level, kind, message, actor) VALUES ($1, 'info', 'audit.token_created', $2, $3)",
                utcnow(), f"API token {args.name!r} created for {args.user} from the command line", args.user,
            )
        if created:
            print(f"created operator {args.user} (no password: API tokens only)", file=sys.stderr)
        print(token)
        return 0

    return _with_db(args, fn)


# ------------------------------------------------------------------------- client side


class Client:
    """The operator API over HTTP. Every failure becomes one :class:`CliError` line."""

    def __init__(self, args: argparse.Namespace) -> None:
        import httpx

        server = getattr(args, "server", None) or os.environ.get("VETTING_SERVER")
        if not server:
            settings = _settings(args)
            s = settings.server
            server = s.public_url or f"http://{'127.0.0.1' if s.host in ('0.0.0.0', '::') else s.host}:{s.port}"
        token = getattr(args, "token", None) or os.environ.get("VETTING_TOKEN")
        if not token:
            raise CliError("no API token: pass --token or set $VETTING_TOKEN (create one with 'vetting token create')")
        if not server.startswith(("http://", "https://")):
            raise CliError(f"the server URL {server!r} must start with http:// or https:// (--server or $VETTING_SERVER)",
                           USAGE)
        self.base = server.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"}
        command = getattr(args, "command_line", None)
        if command:  # a run started by this command records it as its origin
            headers["X-Vetting-Command"] = command.encode("ascii", "replace").decode()
        self.http = httpx.Client(base_url=self.base, headers=headers, timeout=30)

    def unreachable(self, exc: Exception) -> CliError:
        why = str(exc) or type(exc).__name__
        return CliError(f"cannot reach the server at {self.base} ({why}): is 'vetting serve' running there? "
                        "set --server or $VETTING_SERVER")

    def call(self, method: str, path: str, **kw: Any) -> Any:
        import httpx

        try:
            r = self.http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise self.unreachable(exc) from None
        if r.status_code >= 400:
            try:
                body: Any = r.json()
            except ValueError:
                body = r.text[:300]
            raise http_error(method, path, r.status_code, body)
        if r.status_code == 204:
            return None
        try:
            return r.json()
        except ValueError:
            raise CliError(f"{self.base} answered {method} {path} with something that is not JSON: "
                           "is --server a Vetting server?") from None


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    text = str(v)
    if len(text) >= 19 and text[4:5] == "-" and text[10:11] == "T":  # an ISO timestamp: to the second
        return text[:19].replace("T", " ")
    return " ".join(text.split())


def _table(rows: list[dict[str, Any]], cols: list[str], headers: list[str] | None = None) -> str:
    """Aligned columns; the last one is not padded."""
    cells = [[_cell(r.get(c)) for c in cols] for r in rows]
    heads = [h.upper() for h in (headers or cols)]
    widths = [max([len(h)] + [len(x[i]) for x in cells]) for i, h in enumerate(heads)]

    def line(values: list[str]) -> str:
        return "  ".join(v.ljust(w) for v, w in zip(values, widths)).rstrip()

    return "\n".join([line(heads)] + [line(row) for row in cells])


def _pairs(items: list[tuple[str, Any]]) -> str:
    """``key  value`` lines, keys aligned."""
    width = max(len(k) for k, _ in items)
    return "\n".join(f"{k.ljust(width)}  {_cell(v) if not isinstance(v, str) else v}" for k, v in items)


def _json(data: Any) -> None:
    print(json.dumps(data, indent=2))


def _host_id(c: Client, ref: str) -> int:
    if ref.isdigit():
        return int(ref)
    for h in c.call("GET", "/api/v1/hosts", params={"limit": 1000})["items"]:
        if h["name"] == ref:
            return int(h["id"])
    raise CliError(f"no host named {ref!r}: 'vetting host list' shows the registered hosts")


def boot_options(pairs: list[str]) -> dict[str, Any]:
    """``["address=10.0.0.7", "port=623", "efiboot=true"]`` → a boot_config; values are
    YAML scalars (numbers and booleans typed), the server checks them against the
    provider's config."""
    from vetting_core.safeyaml import YamlError, load_yaml

    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise CliError(f"--boot-option {pair!r}: expected KEY=VALUE, e.g. --boot-option address=10.0.0.7", USAGE)
        try:
            value = load_yaml(raw, what=f"--boot-option {key}") if raw.strip() else ""
        except YamlError:
            value = raw
        out[key.strip()] = raw if isinstance(value, (dict, list)) or value is None else value
    return out


def cmd_host_add(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"name": args.name, "mac": args.mac, "boot_provider": args.boot_provider, "notes": args.notes}
    if args.boot_config:
        try:
            body["boot_config"] = json.loads(args.boot_config)
        except ValueError as exc:
            raise CliError(f"--boot-config is not JSON ({exc}): e.g. '{{\"broadcast_ip\": \"10.0.0.255\"}}'", USAGE) from None
    if args.spec:
        try:
            body["expected_spec_yaml"] = Path(args.spec).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise CliError(f"cannot read the spec file {args.spec}: {getattr(exc, 'strerror', None) or exc}: "
                           "give the path of an expected-spec YAML file (docs/spec.md)") from None
    if args.boot_option:
        body["boot_config"] = {**body.get("boot_config", {}), **boot_options(args.boot_option)}
    c = Client(args)
    h = c.call("POST", "/api/v1/hosts", json=body)
    print(f"host {h['id']}: {h['name']} {h['mac']} (boot: {h['boot_provider']})")
    print(f"host agent token (shown once, for 'vetting-agent host'): {h['agent_token']}")
    return 0


HOST_COLUMNS = ["id", "name", "mac", "boot_provider", "last_seen_at", "last_seen_ip", "agent_version"]


def cmd_host_list(args: argparse.Namespace) -> int:
    items = Client(args).call("GET", "/api/v1/hosts", params={"limit": 1000})["items"]
    if args.json:
        _json(items)
    else:
        print(_table(items, HOST_COLUMNS, ["id", "name", "mac", "boot", "last seen", "from", "agent"]))
    return 0


def cmd_host_show(args: argparse.Namespace) -> int:
    c = Client(args)
    host_id = _host_id(c, args.host)
    h = c.call("GET", f"/api/v1/hosts/{host_id}")
    runs = c.call("GET", "/api/v1/runs", params={"host_id": host_id, "limit": 5})["items"]
    if args.json:
        _json({**h, "recent_runs": runs})
        return 0
    spec = h["expected_spec_yaml"].strip()
    print(_pairs([
        ("host", f"{h['id']} {h['name']}"), ("mac", h["mac"]), ("boot", h["boot_provider"]),
        ("boot config", json.dumps(h["boot_config"]) if h["boot_config"] else "-"),
        ("notes", h["notes"] or "-"), ("created", _cell(h["created_at"])),
        ("last seen", f"{_cell(h['last_seen_at'])} from {h['last_seen_ip']}" if h.get("last_seen_at") else "never"),
        ("agent", h.get("agent_version") or "-"),
        ("expected spec", "" if spec else "none (SpecValidate is skipped)"),
    ]))
    lines = spec.splitlines()
    for line in lines[:40]:
        print(f"  {line}")
    if len(lines) > 40:
        print(f"  … {len(lines) - 40} more lines (--json shows them)")
    if runs:
        print("\nrecent runs:")
        print(_table(runs, RUN_COLUMNS, RUN_HEADERS))
    return 0


def cmd_run_start(args: argparse.Namespace) -> int:
    c = Client(args)
    body: dict[str, Any] = {"host_id": _host_id(c, args.host), "non_destructive": args.non_destructive}
    if args.profile:
        body["profile"] = args.profile
    if args.stage:
        body["stages"] = args.stage
    r = c.call("POST", "/api/v1/runs", json=body)
    run = r["run"]
    print(f"run {run['id']} on {run['host_name']}: {run['state']} (profile {run['profile']}"
          f"{', non-destructive' if run['non_destructive'] else ''})")
    print(f"agent token (shown once): {r['agent_token']}")
    print(f"connect an agent by hand: vetting-agent connect --server {c.base} --run {run['id']} --token {r['agent_token']}")
    return 0


RUN_COLUMNS = ["id", "host_name", "state", "result", "profile", "current_stage", "started_at", "reason"]
RUN_HEADERS = ["id", "host", "state", "result", "profile", "stage", "started", "reason"]


def cmd_run_list(args: argparse.Namespace) -> int:
    params: dict[str, Any] = {"limit": args.limit, "order_by": args.order_by}
    if args.state:
        params["state"] = args.state
    if args.host:
        params["host"] = args.host
    page = Client(args).call("GET", "/api/v1/runs", params=params)
    if args.json:
        _json(page)
        return 0
    print(_table(page["items"], RUN_COLUMNS, RUN_HEADERS))
    print(f"({len(page['items'])} of {page['total']})")
    return 0


MARKS = {"passed": "✔", "failed": "✘", "skipped": "–", "cannot_run": "⊘", "running": "…", "hold": "!"}


def _label(state: str) -> str:
    return "could not run" if state == "cannot_run" else state


def _duration(st: dict[str, Any]) -> str:
    from datetime import datetime

    from vetting_core.progress import fmt_duration

    if not (st.get("started_at") and st.get("completed_at")):
        return ""
    t0, t1 = (datetime.fromisoformat(st[k].replace("Z", "+00:00")) for k in ("started_at", "completed_at"))
    return fmt_duration((t1 - t0).total_seconds())


def report_paths(run: dict[str, Any]) -> list[Path]:
    """The run's report files, HTML first (``report_path`` is the JSON report's)."""
    if not run.get("report_path"):
        return []
    json_path = Path(run["report_path"])
    return [json_path.with_name("report.html"), json_path, json_path.with_name("report.ocptv.jsonl")]


def _print_detail(d: dict[str, Any], *, report: bool = True) -> None:
    run = d["run"]
    print(f"run {run['id']} on {run['host_name']}: {run['state']}"
          + (f" ({run['result']})" if run["result"] else "")
          + (f" — {run['reason']}" if run["reason"] else ""))
    rows = [{"mark": MARKS.get(s["state"], " "), "stage": s["name"], "verdict": _label(s["state"]),
             "took": _duration(s), "reason": s.get("reason") or ""} for s in d["stages"]]
    print(_table(rows, ["mark", "stage", "verdict", "took", "reason"], [" ", "stage", "verdict", "took", "reason"]))
    for diff in d["spec_diffs"]:
        print(f"  spec {diff['severity']}: {diff['field']}: expected {diff['expected']}, found {diff['actual']}")
    if d["breach_count"]:
        print(f"  {d['breach_count']} threshold breach(es)")
    print(f"  {d['measurement_count']} samples, {d['log_line_count']} log lines")
    if run.get("origin"):
        print(f"  started by: {run['origin']}")
    for path in report_paths(run)[:1] if report else []:
        print(f"  report: {path}")


def cmd_run_show(args: argparse.Namespace) -> int:
    d = Client(args).call("GET", f"/api/v1/runs/{args.run}")
    if args.json:
        _json(d)
    else:
        _print_detail(d)
    return 0


def cmd_run_action(args: argparse.Namespace) -> int:
    """cancel, release, override, retry-stage: one line with the run's new state."""
    c = Client(args)
    body: dict[str, Any] = {"reason": args.reason}
    if args.action == "override":
        body["flags"] = _flags(args.flag) if args.flag else {"wipe": True}
    run = c.call("POST", f"/api/v1/runs/{args.run}/{args.action}", json=body)
    if args.json:
        _json(run)
        return 0
    what = {"cancel": "cancelled", "release": "released", "override": "overridden", "retry-stage": "retrying"}[args.action]
    stage = f" {run['current_stage']}" if args.action in ("override", "retry-stage") and run.get("current_stage") else ""
    print(f"run {run['id']} on {run['host_name']}: {what}{stage}; now {run['state']}")
    return 0


def _flags(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, eq, raw = pair.partition("=")
        if not eq or not key:
            raise CliError(f"--flag {pair!r}: write KEY=VALUE (e.g. --flag wipe=true)", USAGE)
        try:
            out[key] = json.loads(raw)
        except ValueError:
            out[key] = raw
    return out


FINAL = {"Completed", "Failed", "FailedHolding", "Released", "Cancelled"}


def outcome_code(run: dict[str, Any]) -> int:
    """Exit status of a finished run: 0 passed, 3 incomplete (a stage could not run
    here), 1 anything else (failed, held, cancelled)."""
    if run["state"] == "Completed":
        return 3 if run.get("result") == "incomplete" else 0
    return 1


class _LiveLine:
    """``vetting run watch``'s progress: the local mode's line (:func:`progress_line`),
    redrawn in place on a terminal; in a pipe or a log, a line when the stage changes
    and at most every ``every_s`` seconds otherwise (as the local mode prints it)."""

    def __init__(self, started_at: Any, stream: Any = None, every_s: float = 5.0) -> None:
        self.started_at = started_at  # stage name -> when it started (UTC), from the server
        self.stream = stream or sys.stdout
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every_s = every_s
        self.drawn = False
        self.stage: str | None = None
        self.started = 0.0  # the stage's start, as a time.time()
        self.printed = 0.0

    def progress(self, stage: str | None, percent: int | None, message: str, index: str) -> None:
        import time

        from vetting_core.progress import progress_line

        now = time.time()
        if stage != self.stage:
            began = self.started_at(stage) if stage else None
            self.stage, self.started, self.printed = stage, began.timestamp() if began else now, 0.0
        elif not self.tty and now - self.printed < self.every_s:
            return
        self.printed = now
        fraction = None if percent is None else percent / 100
        text = progress_line(index, stage or "-", fraction, max(0.0, now - self.started), message)
        if self.tty:
            self.stream.write("\r\x1b[2K" + text)
            self.drawn = True
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def print(self, text: str) -> None:
        if self.drawn:
            self.stream.write("\r\x1b[2K")
            self.drawn = False
        self.stream.write(text + "\n")
        self.stream.flush()


def cmd_run_watch(args: argparse.Namespace) -> int:
    """Live stage progress from the SSE stream until the run ends (or holds). Exit
    status: :func:`outcome_code`."""
    import httpx

    from vetting_core.text import printable  # agents' text, control characters escaped

    c = Client(args)
    d = c.call("GET", f"/api/v1/runs/{args.run}")
    _print_detail(d)
    if d["run"]["state"] in FINAL:
        return outcome_code(d["run"])
    order = [s["name"] for s in d["stages"]]
    events = c.call("GET", f"/api/v1/runs/{args.run}/events", params={"limit": 5000})
    last = events[-1]["id"] if events else 0
    headers = {"Last-Event-ID": str(last), "Accept": "text/event-stream"}
    state = d["run"]["state"]

    def started_at(stage: str) -> Any:  # asked once per stage: elapsed and ETA count from there
        from datetime import datetime

        for st in c.call("GET", f"/api/v1/runs/{args.run}", params={"points": 1})["stages"]:
            if st["name"] == stage and st.get("started_at"):
                return datetime.fromisoformat(st["started_at"].replace("Z", "+00:00"))
        return None

    live = _LiveLine(started_at)
    try:
        with c.http.stream("GET", "/api/v1/events/stream", params={"run_id": args.run}, headers=headers,
                           timeout=httpx.Timeout(30, read=None)) as r:
            if r.status_code >= 400:
                raise http_error("GET", "/api/v1/events/stream", r.status_code, r.read().decode(errors="replace"))
            event, data = None, []
            for line in r.iter_lines():
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].strip())
                elif line == "" and data:
                    raw, data = "\n".join(data).strip(), []
                    if not raw:
                        continue  # a comment or a retry hint
                    payload = json.loads(raw)
                    if event == "progress":
                        stage = payload.get("stage")
                        index = f"[{order.index(stage) + 1}/{len(order)}]" if stage in order else "[-]"
                        live.progress(stage, payload.get("percent"), printable(payload.get("message") or ""), index)
                    else:
                        live.print(printable(f"{payload['ts'][11:19]} {payload['message']}"))
                        to = (payload.get("data") or {}).get("to")
                        if to:
                            state = to
                        if state in FINAL:
                            break
    except KeyboardInterrupt:
        live.print("")
        return 130
    except httpx.HTTPError as exc:
        raise c.unreachable(exc) from None
    d = c.call("GET", f"/api/v1/runs/{args.run}")
    _print_detail(d, report=getattr(args, "report_line", True))
    return outcome_code(d["run"])


def cmd_plugins_list(args: argparse.Namespace) -> int:
    from vetting_core.plugins import describe, load_registry

    blocked: list[str] = []
    path = args.config or os.environ.get("VETTING_CONFIG")
    if path:
        blocked = _settings(args).plugins.disable
    print(describe(load_registry(blocked=blocked)))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from . import demo

    return int(demo.main(args) or 0)


# ------------------------------------------------------------------------- parser


class _Parser(argparse.ArgumentParser):
    """A usage error is one line (the problem and where the help is), exit status 2."""

    def error(self, message: str) -> NoReturn:
        raise CliError(f"{message} (see '{self.prog} --help')", USAGE)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="vetting", description="Vetting orchestrator")
    p.add_argument("--config", help="configuration file (default $VETTING_CONFIG or ./vetting.yaml)")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def client_opts(sp: argparse.ArgumentParser, json_out: bool = False) -> None:
        sp.add_argument("--server", help="server URL (default $VETTING_SERVER or the config's server.public_url)")
        sp.add_argument("--token", help="operator API token (default $VETTING_TOKEN)")
        sp.add_argument("--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        if json_out:
            sp.add_argument("--json", action="store_true", help="print the API's JSON instead of a table (for scripts)")

    s = sub.add_parser("serve", help="run the orchestrator server")
    s.add_argument("--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    s.add_argument("--host")
    s.add_argument("--port", type=int)
    s.set_defaults(func=cmd_serve)

    db = sub.add_parser("db", help="database maintenance").add_subparsers(dest="db_command", required=True, parser_class=_Parser)
    m = db.add_parser("migrate", help="apply pending schema migrations")
    m.add_argument("--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    m.set_defaults(func=cmd_db_migrate)

    adm = sub.add_parser("admin", help="operator accounts").add_subparsers(dest="admin_command", required=True, parser_class=_Parser)
    a = adm.add_parser("create", help="create an operator (or set its password); password from stdin or a prompt")
    a.add_argument("user")
    a.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    a.add_argument("--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    a.set_defaults(func=cmd_admin_create)

    tok = sub.add_parser("token", help="operator API tokens").add_subparsers(dest="token_command", required=True, parser_class=_Parser)
    t = tok.add_parser("create", help="create an API token (printed once on stdout)")
    t.add_argument("--user", default="admin", help="operator the token belongs to (created without a password if new)")
    t.add_argument("--name", default="cli", help="a label for the token")
    t.add_argument("--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    t.set_defaults(func=cmd_token_create)

    host = sub.add_parser("host", help="hosts").add_subparsers(dest="host_command", required=True, parser_class=_Parser)
    h = host.add_parser("add", help="register a host")
    h.add_argument("name")
    h.add_argument("--mac", required=True)
    h.add_argument("--boot-provider", default="manual", help="wol, manual, agent (host mode), ipmi, redfish or a plugin's")
    h.add_argument("--boot-config", help="JSON, e.g. '{\"broadcast_ip\": \"10.0.0.255\"}'")
    h.add_argument("--boot-option", action="append", default=[], metavar="KEY=VALUE",
                   help="one boot_config key (repeat), e.g. --boot-option address=10.0.0.7 "
                        "--boot-option password_env=BMC_PW (docs/pxe.md)")
    h.add_argument("--spec", help="expected spec YAML file")
    h.add_argument("--notes", default="")
    client_opts(h)
    h.set_defaults(func=cmd_host_add)
    h = host.add_parser("list", help="list hosts")
    client_opts(h, json_out=True)
    h.set_defaults(func=cmd_host_list)
    h = host.add_parser("show", help="show a host")
    h.add_argument("host", help="id or name")
    client_opts(h, json_out=True)
    h.set_defaults(func=cmd_host_show)

    run = sub.add_parser("run", help="runs").add_subparsers(dest="run_command", required=True, parser_class=_Parser)
    r = run.add_parser("start", help="start a run")
    r.add_argument("host", help="host id or name")
    r.add_argument("--profile", help="default: the server's runs.default_profile")
    r.add_argument("--non-destructive", action="store_true")
    r.add_argument("--stage", action="append", help="run only this stage (repeatable)")
    client_opts(r)
    r.set_defaults(func=cmd_run_start)
    r = run.add_parser("list", help="list runs")
    r.add_argument("--state")
    r.add_argument("--host")
    r.add_argument("--limit", type=int, default=50)
    r.add_argument("--order-by", default="-id")
    client_opts(r, json_out=True)
    r.set_defaults(func=cmd_run_list)
    r = run.add_parser("show", help="show a run: stages, verdicts, reasons, report")
    r.add_argument("run", type=int)
    client_opts(r, json_out=True)
    r.set_defaults(func=cmd_run_show)
    r = run.add_parser("watch", help="follow a run live (percent and ETA of the running stage); "
                                     "exit 0 passed, 1 failed/held/cancelled, 3 incomplete")
    r.add_argument("run", type=int)
    client_opts(r)
    r.set_defaults(func=cmd_run_watch)
    actions = {
        "cancel": "cancel a run that has not finished",
        "release": "release a failed or held host (ends the hold)",
        "override": "retry a held run's failed stage with gates overridden (default --flag wipe=true)",
        "retry-stage": "run a held run's failed stage again, overriding nothing",
    }
    for action, text in actions.items():
        r = run.add_parser(action, help=text)
        r.add_argument("run", type=int)
        r.add_argument("--reason", default="", help="recorded in the run's events with your name")
        if action == "override":
            r.add_argument("--flag", action="append", metavar="KEY=VALUE", help="override flag (repeatable)")
        client_opts(r, json_out=True)
        r.set_defaults(func=cmd_run_action, action=action)

    from ..firmware.cli import add_commands as add_firmware_commands

    add_firmware_commands(sub, client_opts)

    pl = sub.add_parser("plugins", help="plugins").add_subparsers(dest="plugins_command", required=True, parser_class=_Parser)
    x = pl.add_parser("list", help="list installed plugins and what they register")
    x.add_argument("--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    x.set_defaults(func=cmd_plugins_list)

    d = sub.add_parser("demo", help="start a server, register this machine, run a quick non-destructive vetting")
    d.add_argument("--dir", help="working directory for the demo (default: a temporary one)")
    d.add_argument("--port", type=int, default=0)
    d.add_argument("--profile", default="quick")
    d.add_argument("--stage", action="append", help="run only these stages (repeatable; default: the profile's)")
    d.add_argument("--keep", action="store_true", help="keep the server running at the end")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = build_parser().parse_args(argv)
        if not hasattr(args, "config"):
            args.config = None
        args.command_line = command_line(["vetting", *argv])
        return int(args.func(args) or 0)
    except CliError as exc:
        print(f"vetting: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print("vetting: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: still one line, the traceback only on request
        if os.environ.get("VETTING_DEBUG"):
            raise
        print(f"vetting: unexpected error: {type(exc).__name__}: {' '.join(str(exc).split())[:500]} "
              "(rerun with VETTING_DEBUG=1 for the traceback and report it)", file=sys.stderr)
        return 1
