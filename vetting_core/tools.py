"""Running external tools the same careful way everywhere.

A tool wrapper is two things: a function that builds the argv, and a *pure* parser
of the tool's output tested on captured real output under
``tests/fixtures/<tool>/<version>/``. This module runs the argv: ``LC_ALL=C`` so the
output is parseable, no stdin, a timeout that kills the process, and the whole output
kept so it can be stored as an artifact. The exit code is returned, never trusted
alone: the parser decides the verdict.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from subprocess import DEVNULL, PIPE
from typing import Any

import anyio
import msgspec
import structlog

log = structlog.get_logger()


DEBIAN_PACKAGES = {
    "smartctl": "smartmontools", "sensors": "lm-sensors", "ipmitool": "ipmitool", "stress-ng": "stress-ng",
    "fio": "fio", "iperf3": "iperf3", "ethtool": "ethtool", "lspci": "pciutils", "dmidecode": "dmidecode",
    "lshw": "lshw", "badblocks": "e2fsprogs", "wipefs": "util-linux", "lsblk": "util-linux",
    "blkid": "util-linux", "lscpu": "util-linux", "dmesg": "util-linux", "ip": "iproute2",
    "memtester": "memtester",
}
"""Where the tools the built-in stages run come from on Debian/Ubuntu (named in the
"could not run" reason, so the fix is in the message)."""


class ToolNotFound(FileNotFoundError):
    """The binary is not installed (``shutil.which`` found nothing).

    Raised out of a stage it makes the stage ``cannot_run`` (not ``failed``): a missing
    tool says nothing about the machine. ``tool`` is the binary's name.
    """

    def __init__(self, message: str, tool: str | None = None) -> None:
        super().__init__(message)
        self.tool = tool


class ToolResult(msgspec.Struct, kw_only=True):
    argv: list[str]
    returncode: int | None  # None when killed on timeout
    stdout: str
    stderr: str
    duration_s: float
    timed_out: bool = False
    truncated: bool = False  # output beyond max_output_bytes was dropped

    @property
    def command(self) -> str:
        return " ".join(self.argv)


def tool_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"LC_ALL": "C", "LANG": "C"})
    if extra:
        env.update(extra)
    return env


def which(binary: str) -> str:
    path = shutil.which(binary, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    if path is None:
        package = DEBIAN_PACKAGES.get(binary)
        hint = f"; Debian package {package}" if package else ""
        raise ToolNotFound(f"{binary} is not installed (not found on PATH{hint})", binary)
    return path


def _resolve(argv: Sequence[str]) -> list[str]:
    if not argv:
        raise ValueError("empty argv")
    first = str(argv[0])
    if "/" not in first:
        return [which(first), *map(str, argv[1:])]
    if not (os.path.isfile(first) and os.access(first, os.X_OK)):
        raise ToolNotFound(f"{first} does not exist or is not executable", os.path.basename(first))
    return [first, *map(str, argv[1:])]


DEFAULT_MAX_OUTPUT = 64 << 20
"""Bytes of stdout (and, separately, stderr) kept in memory; the rest is read and
dropped so the tool never blocks on a full pipe (``ToolResult.truncated`` says so)."""


def _kill_group(proc: Any) -> None:
    """Kill the tool *and its children* (stress-ng and fio fork workers that would
    otherwise keep running and keep the pipes open)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            proc.kill()


def _keep(sink: list[bytes], chunk: bytes, kept: int, limit: int) -> int:
    """Append what fits under ``limit``; return the new count, or -1 when data was dropped."""
    room = limit - kept
    if len(chunk) <= room:
        sink.append(chunk)
        return kept + len(chunk)
    if room > 0:
        sink.append(chunk[:room])
    return -1


async def _run(
    argv: Sequence[str],
    pump: Callable[[Any, str, int], Awaitable[bool]],
    *,
    timeout: float,
    env: Mapping[str, str] | None,
    cwd: str | os.PathLike[str] | None,
) -> tuple[list[str], int | None, bool, float]:
    """Start ``argv`` in its own session, run ``pump(stream, name, limit)`` on stdout
    and stderr, and kill the whole process group on timeout or cancellation.
    Returns (argv, returncode or None, timed_out, seconds)."""
    resolved = _resolve(argv)
    started = time.monotonic()
    returncode: int | None = None
    timed_out = False
    proc = await anyio.open_process(
        resolved,
        stdin=DEVNULL,
        stdout=PIPE,
        stderr=PIPE,
        env=tool_env(env),
        cwd=cwd,
        start_new_session=True,
    )
    try:
        with anyio.move_on_after(timeout) as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(pump, proc.stdout, "stdout")
                tg.start_soon(pump, proc.stderr, "stderr")
            returncode = await proc.wait()
        if scope.cancelled_caught:
            timed_out = True
            returncode = None
            _kill_group(proc)
    except BaseException:
        _kill_group(proc)  # cancelled from outside (run aborted): leave nothing behind
        raise
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            await proc.aclose()
    return resolved, returncode, timed_out, time.monotonic() - started


async def run_tool(
    argv: Sequence[str],
    *,
    timeout: float = 300.0,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    max_output_bytes: int = DEFAULT_MAX_OUTPUT,
) -> ToolResult:
    """Run ``argv`` to completion; never raises on a non-zero exit or a timeout.

    Raises :class:`ToolNotFound` when the binary is missing. Output is decoded as
    UTF-8 with replacement characters, so garbage never raises.
    """
    chunks: dict[str, list[bytes]] = {"stdout": [], "stderr": []}
    truncated = False

    async def pump(stream: Any, name: str) -> bool:
        nonlocal truncated
        kept = 0
        sink = chunks[name]
        async for chunk in stream:
            kept = _keep(sink, chunk, kept, max_output_bytes)
            if kept < 0:
                truncated, kept = True, max_output_bytes
        return truncated

    resolved, returncode, timed_out, seconds = await _run(
        argv, pump, timeout=timeout, env=env, cwd=cwd
    )
    result = ToolResult(
        argv=resolved,
        returncode=returncode,
        stdout=b"".join(chunks["stdout"]).decode("utf-8", "replace"),
        stderr=b"".join(chunks["stderr"]).decode("utf-8", "replace"),
        duration_s=seconds,
        timed_out=timed_out,
        truncated=truncated,
    )
    log.debug("tool.ran", argv=result.command, rc=returncode, seconds=round(seconds, 3))
    return result


MAX_LINE_BYTES = 64 << 10
"""A "line" longer than this (a progress bar redrawn with ``\\r``) is delivered in
pieces, so a tool that never prints a newline cannot make line splitting quadratic."""


async def stream_tool(
    argv: Sequence[str],
    on_line: Callable[[str, str], Awaitable[None] | None],
    *,
    timeout: float = 300.0,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    max_output_bytes: int = DEFAULT_MAX_OUTPUT,
) -> ToolResult:
    """Like :func:`run_tool`, calling ``on_line(stream, line)`` for every output line as
    it arrives (``stream`` is ``"stdout"`` or ``"stderr"``) — for long stress runs whose
    progress should reach the live log. ``ToolResult.stdout`` is the exact output,
    as :func:`run_tool` returns it."""
    chunks: dict[str, list[bytes]] = {"stdout": [], "stderr": []}
    truncated = False

    async def deliver(name: str, raw: bytes) -> None:
        res = on_line(name, raw.decode("utf-8", "replace").rstrip("\r"))
        if res is not None:
            await res

    async def pump(stream: Any, name: str) -> bool:
        nonlocal truncated
        kept = 0
        sink = chunks[name]
        buf = bytearray()
        async for chunk in stream:
            kept = _keep(sink, chunk, kept, max_output_bytes)
            if kept < 0:
                truncated, kept = True, max_output_bytes
            start = len(buf)
            buf += chunk
            cut = 0
            pos = buf.find(b"\n", start)
            while pos != -1:
                await deliver(name, bytes(buf[cut:pos]))
                cut = pos + 1
                pos = buf.find(b"\n", cut)
            del buf[:cut]
            while len(buf) > MAX_LINE_BYTES:
                await deliver(name, bytes(buf[:MAX_LINE_BYTES]))
                del buf[:MAX_LINE_BYTES]
        if buf:
            await deliver(name, bytes(buf))
        return truncated

    resolved, returncode, timed_out, seconds = await _run(
        argv, pump, timeout=timeout, env=env, cwd=cwd
    )
    return ToolResult(
        argv=resolved,
        returncode=returncode,
        stdout=b"".join(chunks["stdout"]).decode("utf-8", "replace"),
        stderr=b"".join(chunks["stderr"]).decode("utf-8", "replace"),
        duration_s=seconds,
        timed_out=timed_out,
        truncated=truncated,
    )
