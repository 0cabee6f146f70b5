"""The ``vetting`` command line.

Server-side commands (``serve``, ``db migrate``, ``admin create``, ``token create``)
read the configuration file (``--config``, ``$VETTING_CONFIG``, or ``./vetting.yaml``
when it exists) and work on the database directly. Client commands (``host``,
``run``) talk to a running server's API with an operator token (``--token`` or
``$VETTING_TOKEN``; ``--server`` or ``$VETTING_SERVER``, default from the config).

Litestar, Piccolo, asyncpg and httpx are imported only by the commands that need
them, so ``vetting plugins list`` starts fast.

Every error is one line on stderr naming the problem and the fix (:mod:`.errors`),
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
from typing import Any

from .client import Client, _host_id, _settings
from .errors import USAGE, CliError, database_error
from .output import _cell, _json, _pairs, _table
from .watch import _print_detail


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
    from ..security import hash_password

    pw_hash = hash_password(_read_password(args))

    async def fn(db: Any, applied: list[str]) -> int:
        # imported once the database is open: a missing PostgreSQL driver is reported there
        from .. import accounts
        from ..runtime import write_event

        row = await accounts.user_by_name(db, args.user)
        async with db.transaction() as tx:
            if row is None:
                await accounts.create_user(tx, args.user, pw_hash)
                what = "created"
            else:
                await accounts.set_password(tx, int(row["id"]), pw_hash)
                what = "password changed"
            await write_event(tx, "audit.admin", f"operator {args.user} {what} from the command line", actor=args.user)
        print(f"operator {args.user}: {what}")
        return 0

    return _with_db(args, fn)


def cmd_token_create(args: argparse.Namespace) -> int:
    from ..security import new_token, token_hash

    token = new_token("vo_")

    async def fn(db: Any, applied: list[str]) -> int:
        # imported once the database is open: a missing PostgreSQL driver is reported there
        from .. import accounts
        from ..runtime import write_event

        uid, created = await accounts.ensure_user(db, args.user, None)
        async with db.transaction() as tx:
            await accounts.create_token(tx, uid, args.name, token_hash(token))
            await write_event(tx, "audit.token_created", f"API token {args.name!r} created for {args.user} from the command line",
                              actor=args.user)
        if created:
            print(f"created operator {args.user} (no password: API tokens only)", file=sys.stderr)
        print(token)
        return 0

    return _with_db(args, fn)


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


def cmd_plugins_list(args: argparse.Namespace) -> int:
    from vetting_core.plugins import describe, load_registry

    blocked: list[str] = []
    path = args.config or os.environ.get("VETTING_CONFIG")
    if path:
        blocked = _settings(args).plugins.disable
    print(describe(load_registry(blocked=blocked)))
    return 0
