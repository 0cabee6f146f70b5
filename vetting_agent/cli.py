"""``vetting-agent``: the command line of the agent.

::

    vetting-agent pxe      [--cmdline /proc/cmdline]        # the live image's service
    vetting-agent connect  --server URL --run ID --token T  # the same flow, by hand
    vetting-agent host     --server URL --token T           # installed machine, polls for runs
    vetting-agent local    --profile quick --out DIR [--spec FILE] [--stages A,B] [--iperf-peer HOST]
    vetting-agent plugins                                    # what is installed
    vetting-agent inventory                                  # run the probes, print the document

Exit status: 0 when the run passed, 1 when it failed, 2 for a usage or setup error
(bad command line, unreadable spec, unknown profile or stage).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
from pathlib import Path
from typing import Any

import anyio
import structlog

from vetting_core.cmdline import command_line
from vetting_core.plugins import UnknownNameError, describe, load_registry
from vetting_core.profiles import ProfileError
from vetting_core.specdiff import SpecError
from vetting_core.thresholds import ThresholdError

from . import AGENT_VERSION
from .cmdline import PROC_CMDLINE, CmdlineError, RunCoordinates, read_coordinates
from .hold import DEFAULT_AUTHORIZED_KEYS
from .session import AgentOptions

SPOOL_ENV = "VETTING_AGENT_SPOOL"
DEFAULT_SPOOL = "/var/lib/vetting-agent/spool"


def configure_logging(level: str = "info", fmt: str = "console") -> None:
    """Only the applications configure structlog; libraries just get loggers."""
    renderer: Any = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be positive")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vetting-agent", description="Vetting agent: runs the stage pipeline on this machine.")
    parser.add_argument("--version", action="version", version=f"vetting-agent {AGENT_VERSION}")
    parser.add_argument("--log-level", default=os.environ.get("VETTING_AGENT_LOG_LEVEL", "info"),
                        choices=["debug", "info", "warning", "error"])
    parser.add_argument("--log-format", default="console", choices=["console", "json"])
    sub = parser.add_subparsers(dest="command", required=True)

    def connected(p: argparse.ArgumentParser) -> None:
        p.add_argument("--spool-dir", type=Path, default=Path(os.environ.get(SPOOL_ENV, DEFAULT_SPOOL)),
                       help=f"where the on-disk spool lives (default ${SPOOL_ENV} or {DEFAULT_SPOOL})")
        p.add_argument("--authorized-keys", type=Path, default=Path(DEFAULT_AUTHORIZED_KEYS),
                       help="where a hold installs the operator's key (default %(default)s)")
        p.add_argument("--hold-ip", help="address operators SSH to during a hold (default: the hello address)")
        p.add_argument("--no-sensors", action="store_true", help="do not run the sensor sidecar")
        p.add_argument("--backoff-cap", type=float, default=30.0, help="longest retry delay in seconds")
        p.add_argument("--final-wait", type=float, default=120.0,
                       help="seconds to wait for the orchestrator's shutdown after the last stage")
        p.add_argument("--poweroff-command", default="systemctl poweroff",
                       help="what 'shutdown' runs when powering off is on (default: %(default)s)")

    p = sub.add_parser("pxe", help="live image: read vetting.server/run/token from the kernel command line")
    p.add_argument("--cmdline", default=PROC_CMDLINE, help="file to read instead of %(default)s")
    p.add_argument("--no-poweroff", action="store_true", help="do not power off on the shutdown command")
    connected(p)

    p = sub.add_parser("connect", help="drive one run started on the orchestrator")
    p.add_argument("--server", required=True)
    p.add_argument("--run", required=True, type=_positive_int)
    p.add_argument("--token", default=os.environ.get("VETTING_AGENT_TOKEN"), help="run token (or $VETTING_AGENT_TOKEN)")
    p.add_argument("--poweroff", action="store_true", help="power off on the shutdown command")
    connected(p)

    p = sub.add_parser("host", help="installed machine: poll the orchestrator and run what it asks (non-destructive only)")
    p.add_argument("--server", required=True)
    p.add_argument("--token", default=os.environ.get("VETTING_AGENT_TOKEN"), help="host agent token (or $VETTING_AGENT_TOKEN)")
    p.add_argument("--once", action="store_true", help="exit after one run (exit status of that run)")
    p.add_argument("--max-idle", type=float, default=None, help="with --once: give up after this many seconds without a run")
    connected(p)

    p = sub.add_parser("local", help="run the pipeline here, no orchestrator; write reports to --out")
    p.add_argument("--profile", default="quick")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--spec", type=Path, help="expected spec YAML of this machine")
    p.add_argument("--stages", help="comma-separated stage names (default: the profile's stages)")
    p.add_argument("--iperf-peer", help="iperf3 server for the Network stage")
    p.add_argument("--keep-going", action="store_true", help="run the remaining stages after a failure")
    p.add_argument("--allow-destructive", action="store_true",
                   help="let destructive stages write to disks (never without an expected spec's disk allowlist)")
    p.add_argument("--no-sensors", action="store_true")

    sub.add_parser("plugins", help="list the installed plugins and what they register")
    sub.add_parser("inventory", help="run the inventory probes and print the document as JSON")
    return parser


def _options(args: argparse.Namespace, *, power_off: bool, non_destructive_only: bool = False) -> AgentOptions:
    return AgentOptions(
        spool_dir=args.spool_dir,
        power_off=power_off,
        poweroff_argv=tuple(shlex.split(args.poweroff_command)),
        authorized_keys=args.authorized_keys,
        hold_ip=args.hold_ip,
        sidecar=not args.no_sensors,
        backoff_cap_s=max(0.5, args.backoff_cap),
        final_wait_s=args.final_wait,
        non_destructive_only=non_destructive_only,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.command_line = command_line(["vetting-agent", *(sys.argv[1:] if argv is None else argv)])
    configure_logging(args.log_level, args.log_format)
    try:
        return anyio.run(_main, args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


async def _main(args: argparse.Namespace) -> int:
    registry = load_registry()  # a broken plugin is logged by the loader and skipped

    if args.command == "plugins":
        print(describe(registry))
        return 0
    if args.command == "inventory":
        from .inventory import collect

        doc = await collect(registry)
        print(json.dumps(doc, indent=2, sort_keys=True, default=str))
        return 0
    if args.command == "local":
        from .local import LocalOptions, run_local

        stages = [s.strip() for s in args.stages.split(",") if s.strip()] if args.stages else None
        try:
            outcome = await run_local(
                registry,
                LocalOptions(
                    profile=args.profile,
                    out_dir=args.out,
                    spec_path=args.spec,
                    stages=stages,
                    iperf_peer=args.iperf_peer,
                    keep_going=args.keep_going,
                    allow_destructive=args.allow_destructive,
                    sidecar=not args.no_sensors,
                    command=args.command_line,
                ),
            )
        except (ProfileError, UnknownNameError, SpecError, ThresholdError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return outcome.exit_code

    from .session import run_connected

    if args.command == "pxe":
        try:
            coords = read_coordinates(args.cmdline)
        except CmdlineError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        outcome = await run_connected(coords, registry, _options(args, power_off=not args.no_poweroff), mode="pxe")
        return outcome.exit_code
    if not args.token:
        print("error: --token (or $VETTING_AGENT_TOKEN) is required", file=sys.stderr)
        return 2
    if args.command == "connect":
        coords = RunCoordinates(server=args.server.rstrip("/"), run_id=args.run, token=args.token)
        outcome = await run_connected(coords, registry, _options(args, power_off=args.poweroff), mode="connect")
        return outcome.exit_code
    if args.command == "host":
        from .hostmode import run_host

        return await run_host(
            args.server.rstrip("/"),
            args.token,
            registry,
            _options(args, power_off=False, non_destructive_only=True),
            once=args.once,
            max_idle_s=args.max_idle,
        )
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
