"""The ``vetting`` argument parser and :func:`main`, the console script.

The parser is the only module that knows every command, the demo included, so the
commands, the client and the demo import each other in one direction only."""

from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn

from vetting_core.cmdline import command_line

from .commands import (
    cmd_admin_create, cmd_db_migrate, cmd_host_add, cmd_host_list, cmd_host_show, cmd_plugins_list, cmd_run_action,
    cmd_run_list, cmd_run_show, cmd_run_start, cmd_serve, cmd_token_create,
)
from .errors import USAGE, CliError
from .watch import cmd_run_watch


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
