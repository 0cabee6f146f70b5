"""The ``vetting`` command line.

Server-side commands (``serve``, ``db migrate``, ``admin create``, ``token create``)
read the configuration file (``--config``, ``$VETTING_CONFIG``, or ``./vetting.yaml``
when it exists) and work on the database directly. Client commands (``host``,
``run``) talk to a running server's API with an operator token (``--token`` or
``$VETTING_TOKEN``; ``--server`` or ``$VETTING_SERVER``, default from the config).

Litestar, Piccolo, asyncpg and httpx are imported only by the commands that need
them, so ``vetting plugins list`` starts fast.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from pathlib import Path
from typing import Any


def _settings(args: argparse.Namespace) -> Any:
    from vetting_core.config import ConfigError, load_settings

    path = args.config or os.environ.get("VETTING_CONFIG")
    if path is None and Path("vetting.yaml").is_file():
        path = "vetting.yaml"
    try:
        return load_settings(path)
    except ConfigError as exc:
        raise SystemExit(f"vetting: {exc}") from None


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

    from .app import create_app

    app = create_app(settings)
    _tune_interpreter()
    loop, http = "asyncio", "h11"  # http: a protocol name or class
    try:
        import uvloop  # noqa: F401

        loop = "uvloop"
    except ImportError:
        pass
    try:
        from .edge_http import EdgeProtocol  # httptools, answering the hot agent routes itself

        http = EdgeProtocol
    except ImportError:
        pass
    config = uvicorn.Config(
        app, host=settings.server.host, port=settings.server.port, loop=loop, http=http,
        log_level=settings.logging.level, access_log=False, backlog=4096, timeout_keep_alive=75,
        lifespan="on",
    )
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
    import anyio

    from .app import _safe_url
    from .database import connect_database
    from .migrate import migrate

    d = settings.database

    async def check() -> None:
        db = connect_database(d.url, busy_timeout_ms=d.busy_timeout_ms, pool_min=1, pool_max=1)
        await db.open()
        try:
            await migrate(db)
        finally:
            await db.close()

    try:
        anyio.run(check)
    except Exception as exc:
        raise SystemExit(f"vetting: cannot open the database {_safe_url(d.url)}: {type(exc).__name__}: {exc}") from None


def _with_db(args: argparse.Namespace, fn: Any) -> Any:
    import anyio

    from .database import connect_database
    from .migrate import migrate

    settings = _settings(args)
    d = settings.database

    async def main() -> Any:
        db = connect_database(d.url, busy_timeout_ms=d.busy_timeout_ms, pool_min=1, pool_max=2)
        await db.open()
        try:
            applied = await migrate(db)
            return await fn(db, applied)
        finally:
            await db.close()

    try:
        return anyio.run(main)
    except OSError as exc:
        from .app import _safe_url

        raise SystemExit(f"vetting: cannot reach the database {_safe_url(d.url)}: {exc}") from None


def cmd_db_migrate(args: argparse.Namespace) -> int:
    from .migrate import current_version

    async def fn(db: Any, applied: list[str]) -> int:
        version = await current_version(db)
        print(f"applied {len(applied)} migration(s){': ' + ', '.join(applied) if applied else ''}; schema version {version}")
        return 0

    return _with_db(args, fn)


async def _ensure_user(db: Any, name: str, password_hash: str | None) -> tuple[int, bool]:
    from .database import utcnow

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
    if args.password_stdin or not sys.stdin.isatty():
        pw = sys.stdin.readline().rstrip("\n")
    else:
        pw = getpass.getpass(f"password for {args.user}: ")
        if getpass.getpass("again: ") != pw:
            raise SystemExit("vetting: the passwords differ")
    if len(pw) < 8:
        raise SystemExit("vetting: the password must have at least 8 characters")
    return pw


def cmd_admin_create(args: argparse.Namespace) -> int:
    from .database import utcnow
    from .security import hash_password

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
    from .database import utcnow
    from .security import new_token, token_hash

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
    def __init__(self, args: argparse.Namespace) -> None:
        import httpx

        server = args.server or os.environ.get("VETTING_SERVER")
        if not server:
            settings = _settings(args)
            s = settings.server
            server = s.public_url or f"http://{'127.0.0.1' if s.host in ('0.0.0.0', '::') else s.host}:{s.port}"
        token = args.token or os.environ.get("VETTING_TOKEN")
        if not token:
            raise SystemExit("vetting: no API token: pass --token or set VETTING_TOKEN (create one with 'vetting token create')")
        self.base = server.rstrip("/")
        self.http = httpx.Client(base_url=self.base, headers={"Authorization": f"Bearer {token}"}, timeout=30)

    def call(self, method: str, path: str, **kw: Any) -> Any:
        import httpx

        try:
            r = self.http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise SystemExit(f"vetting: cannot reach {self.base}: {exc}") from None
        if r.status_code >= 400:
            try:
                detail = r.json().get("detail", r.text)
            except ValueError:
                detail = r.text
            raise SystemExit(f"vetting: {method} {path}: {r.status_code}: {detail}")
        if r.status_code == 204:
            return None
        return r.json()


def _table(rows: list[dict[str, Any]], cols: list[str]) -> str:
    cells = [[("" if r.get(c) is None else str(r.get(c))) for c in cols] for r in rows]
    widths = [max([len(c)] + [len(x[i]) for x in cells]) for i, c in enumerate(cols)]
    out = ["  ".join(c.upper().ljust(w) for c, w in zip(cols, widths))]
    out += ["  ".join(x.ljust(w) for x, w in zip(row, widths)) for row in cells]
    return "\n".join(out)


def _host_id(c: Client, ref: str) -> int:
    if ref.isdigit():
        return int(ref)
    for h in c.call("GET", "/api/v1/hosts", params={"limit": 1000})["items"]:
        if h["name"] == ref:
            return int(h["id"])
    raise SystemExit(f"vetting: no host named {ref!r}")


def boot_options(pairs: list[str]) -> dict[str, Any]:
    """``["address=10.0.0.7", "port=623", "efiboot=true"]`` → a boot_config; values are
    YAML scalars (numbers and booleans typed), the server checks them against the
    provider's config."""
    from vetting_core.safeyaml import YamlError, load_yaml

    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"vetting: --boot-option {pair!r}: expected KEY=VALUE, e.g. --boot-option address=10.0.0.7")
        try:
            value = load_yaml(raw, what=f"--boot-option {key}") if raw.strip() else ""
        except YamlError:
            value = raw
        out[key.strip()] = raw if isinstance(value, (dict, list)) or value is None else value
    return out


def cmd_host_add(args: argparse.Namespace) -> int:
    c = Client(args)
    body: dict[str, Any] = {"name": args.name, "mac": args.mac, "boot_provider": args.boot_provider, "notes": args.notes}
    if args.boot_config:
        body["boot_config"] = json.loads(args.boot_config)
    if args.spec:
        body["expected_spec_yaml"] = Path(args.spec).read_text()
    if args.boot_option:
        body["boot_config"] = {**body.get("boot_config", {}), **boot_options(args.boot_option)}
    h = c.call("POST", "/api/v1/hosts", json=body)
    print(f"host {h['id']}: {h['name']} {h['mac']} (boot: {h['boot_provider']})")
    print(f"host agent token (shown once, for 'vetting-agent host'): {h['agent_token']}")
    return 0


def cmd_host_list(args: argparse.Namespace) -> int:
    c = Client(args)
    items = c.call("GET", "/api/v1/hosts", params={"limit": 1000})["items"]
    print(_table(items, ["id", "name", "mac", "boot_provider", "last_seen_at"]))
    return 0


def cmd_host_show(args: argparse.Namespace) -> int:
    c = Client(args)
    h = c.call("GET", f"/api/v1/hosts/{_host_id(c, args.host)}")
    print(json.dumps(h, indent=2))
    return 0


def cmd_run_start(args: argparse.Namespace) -> int:
    c = Client(args)
    body: dict[str, Any] = {"host_id": _host_id(c, args.host), "profile": args.profile, "non_destructive": args.non_destructive}
    if args.stage:
        body["stages"] = args.stage
    r = c.call("POST", "/api/v1/runs", json=body)
    run = r["run"]
    print(f"run {run['id']} on {run['host_name']}: {run['state']} (profile {run['profile']}"
          f"{', non-destructive' if run['non_destructive'] else ''})")
    print(f"agent token (shown once): {r['agent_token']}")
    print(f"connect an agent by hand: vetting-agent connect --server {c.base} --run {run['id']} --token {r['agent_token']}")
    return 0


def cmd_run_list(args: argparse.Namespace) -> int:
    c = Client(args)
    params: dict[str, Any] = {"limit": args.limit, "order_by": args.order_by}
    if args.state:
        params["state"] = args.state
    if args.host:
        params["host"] = args.host
    page = c.call("GET", "/api/v1/runs", params=params)
    print(_table(page["items"], ["id", "host_name", "state", "result", "profile", "current_stage", "started_at"]))
    print(f"({len(page['items'])} of {page['total']})")
    return 0


def _print_detail(d: dict[str, Any]) -> None:
    run = d["run"]
    print(f"run {run['id']} on {run['host_name']}: {run['state']}"
          + (f" ({run['result']})" if run["result"] else "")
          + (f" — {run['reason']}" if run["reason"] else ""))
    for s in d["stages"]:
        mark = {"passed": "✔", "failed": "✘", "skipped": "–", "running": "…", "hold": "!"}.get(s["state"], " ")
        print(f"  {mark} {s['name']:<16} {s['state']:<8} {s.get('reason') or ''}")
    for diff in d["spec_diffs"]:
        print(f"  spec {diff['severity']}: {diff['field']}: expected {diff['expected']}, found {diff['actual']}")
    if d["breach_count"]:
        print(f"  {d['breach_count']} threshold breach(es)")
    print(f"  {d['measurement_count']} samples, {d['log_line_count']} log lines")
    if run.get("report_path"):
        print(f"  report: {run['report_path']}")


def cmd_run_show(args: argparse.Namespace) -> int:
    c = Client(args)
    d = c.call("GET", f"/api/v1/runs/{args.run}")
    if args.json:
        print(json.dumps(d, indent=2))
    else:
        _print_detail(d)
    return 0


FINAL = {"Completed", "Failed", "FailedHolding", "Released", "Cancelled"}


def cmd_run_watch(args: argparse.Namespace) -> int:
    """Live stage progress from the SSE stream until the run ends (or holds)."""
    import httpx

    c = Client(args)
    d = c.call("GET", f"/api/v1/runs/{args.run}")
    _print_detail(d)
    if d["run"]["state"] in FINAL:
        return 0 if d["run"]["state"] == "Completed" else 1
    events = c.call("GET", f"/api/v1/runs/{args.run}/events", params={"limit": 5000})
    last = events[-1]["id"] if events else 0
    headers = {"Last-Event-ID": str(last), "Accept": "text/event-stream"}
    state = d["run"]["state"]
    try:
        with c.http.stream("GET", "/api/v1/events/stream", params={"run_id": args.run}, headers=headers,
                           timeout=httpx.Timeout(30, read=None)) as r:
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
                        pct = "" if payload.get("percent") is None else f" {payload['percent']:>3}%"
                        print(f"  … {payload.get('stage') or '-'}{pct} {payload.get('message') or ''}", flush=True)
                    else:
                        print(f"{payload['ts'][11:19]} {payload['message']}", flush=True)
                        to = (payload.get("data") or {}).get("to")
                        if to:
                            state = to
                        if state in FINAL:
                            break
    except KeyboardInterrupt:
        return 130
    d = c.call("GET", f"/api/v1/runs/{args.run}")
    _print_detail(d)
    return 0 if d["run"]["state"] == "Completed" else 1


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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vetting", description="Vetting orchestrator")
    p.add_argument("--config", help="configuration file (default $VETTING_CONFIG or ./vetting.yaml)")
    sub = p.add_subparsers(dest="command", required=True)

    def client_opts(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--server", help="server URL (default $VETTING_SERVER or the config's server.public_url)")
        sp.add_argument("--token", help="operator API token (default $VETTING_TOKEN)")
        sp.add_argument("--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    s = sub.add_parser("serve", help="run the orchestrator server")
    s.add_argument("--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    s.add_argument("--host")
    s.add_argument("--port", type=int)
    s.set_defaults(func=cmd_serve)

    db = sub.add_parser("db", help="database maintenance").add_subparsers(dest="db_command", required=True)
    m = db.add_parser("migrate", help="apply pending schema migrations")
    m.add_argument("--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    m.set_defaults(func=cmd_db_migrate)

    adm = sub.add_parser("admin", help="operator accounts").add_subparsers(dest="admin_command", required=True)
    a = adm.add_parser("create", help="create an operator (or set its password); password from stdin or a prompt")
    a.add_argument("user")
    a.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    a.add_argument("--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    a.set_defaults(func=cmd_admin_create)

    tok = sub.add_parser("token", help="operator API tokens").add_subparsers(dest="token_command", required=True)
    t = tok.add_parser("create", help="create an API token (printed once on stdout)")
    t.add_argument("--user", default="admin", help="operator the token belongs to (created without a password if new)")
    t.add_argument("--name", default="cli", help="a label for the token")
    t.add_argument("--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    t.set_defaults(func=cmd_token_create)

    host = sub.add_parser("host", help="hosts").add_subparsers(dest="host_command", required=True)
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
    client_opts(h)
    h.set_defaults(func=cmd_host_list)
    h = host.add_parser("show", help="show a host")
    h.add_argument("host", help="id or name")
    client_opts(h)
    h.set_defaults(func=cmd_host_show)

    run = sub.add_parser("run", help="runs").add_subparsers(dest="run_command", required=True)
    r = run.add_parser("start", help="start a run")
    r.add_argument("host", help="host id or name")
    r.add_argument("--profile", default="quick")
    r.add_argument("--non-destructive", action="store_true")
    r.add_argument("--stage", action="append", help="run only this stage (repeatable)")
    client_opts(r)
    r.set_defaults(func=cmd_run_start)
    r = run.add_parser("list", help="list runs")
    r.add_argument("--state")
    r.add_argument("--host")
    r.add_argument("--limit", type=int, default=50)
    r.add_argument("--order-by", default="-id")
    client_opts(r)
    r.set_defaults(func=cmd_run_list)
    r = run.add_parser("show", help="show a run")
    r.add_argument("run", type=int)
    r.add_argument("--json", action="store_true")
    client_opts(r)
    r.set_defaults(func=cmd_run_show)
    r = run.add_parser("watch", help="follow a run's progress live")
    r.add_argument("run", type=int)
    client_opts(r)
    r.set_defaults(func=cmd_run_watch)

    pl = sub.add_parser("plugins", help="plugins").add_subparsers(dest="plugins_command", required=True)
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
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "config"):
        args.config = None
    return int(args.func(args) or 0)
