"""A supervised pool of one-shot iperf3 servers.

iperf3 serves one test at a time: a second client gets "the server is busy". So the
orchestrator (or the Network stage in local mode) hands out *ports*: each lease
starts ``iperf3 -s -1 -p PORT -J`` on a free port of the pool, one client runs
against it, the server exits after that one test, and the lease collects the
server's JSON report. One client per port at any time, by construction.

Usable from the orchestrator (it depends only on anyio and vetting_core) and from
the stage::

    async with IperfServerPool(range(5201, 5211), bind="0.0.0.0") as pool:
        async with pool.lease() as lease:            # waits for a free port
            ...  # tell the client lease.port and let it run
            report = await lease.result(timeout=120)  # the server's iperf3 JSON

For a lease that outlives one coroutine (the orchestrator hands a port to an agent
in one request and reaps it in another) use ``await pool.acquire()`` and
``await lease.release()``; a lease nobody used is reaped by :meth:`IperfServerPool.reap`.

The server writes its JSON to a file rather than a pipe: a long test's report is
larger than a pipe buffer, and a file needs no reader task.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from subprocess import DEVNULL
from typing import Any

import anyio
import anyio.abc
import structlog

from vetting_core.tools import tool_env, which

from .iperf import server_argv

log = structlog.get_logger()


class PoolExhausted(TimeoutError):
    """No port became free within the timeout."""


class PortBusy(OSError):
    """Another program listens on a port of the pool."""


def listening_ports(net_root: str | Path = "/proc/net") -> set[int]:
    """TCP ports in LISTEN state, read from ``tcp``/``tcp6`` under ``net_root``.

    No connection is made: connecting to a one-shot ``iperf3 -s -1`` would use up
    its single test. ``/proc/<pid>/net`` gives the view of that process's network
    namespace (a server started with ``ip netns exec``).
    """
    ports: set[int] = set()
    for name in ("tcp", "tcp6"):
        try:
            lines = Path(net_root, name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) > 3 and parts[3] == "0A":  # TCP_LISTEN
                ports.add(int(parts[1].rsplit(":", 1)[1], 16))
    return ports


class Lease:
    """One port of the pool with its running one-shot server."""

    def __init__(self, pool: IperfServerPool, port: int, process: anyio.abc.Process, out: Path, err: Path) -> None:
        self.pool = pool
        self.port = port
        self.process = process
        self.started = time.monotonic()
        self._out = out
        self._err = err
        self._released = False

    @property
    def finished(self) -> bool:
        return self.process.returncode is not None

    def _stderr(self) -> str:
        try:
            return self._err.read_text(errors="replace").strip()
        except OSError:
            return ""

    async def result(self, timeout: float = 300.0) -> dict[str, Any]:
        """Wait for the server to finish its one test and return its JSON report.

        ``TimeoutError`` when no client completed a test in time (release the lease
        to kill the server); ``ValueError`` when the output is unreadable.
        """
        with anyio.fail_after(timeout):
            await self.process.wait()
        text = self._out.read_text(errors="replace").strip()
        if not text:
            raise ValueError(f"iperf3 server on port {self.port} printed nothing ({self._stderr() or 'no stderr'})")
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"iperf3 server on port {self.port} wrote invalid JSON: {exc.msg}") from None

    async def renew(self, timeout: float = 300.0) -> dict[str, Any] | None:
        """Keep the port for the same holder: wait for the finished test (its report is
        returned, ``None`` when the server ended without one), then start a fresh
        one-shot server on the same port for the next test."""
        report: dict[str, Any] | None
        try:
            report = await self.result(timeout)
        except ValueError:
            report = None
        await self.process.aclose()
        fresh = await self.pool._start(self.port)
        self.process, self._out, self._err, self.started = fresh.process, fresh._out, fresh._err, fresh.started
        return report

    async def release(self) -> None:
        """Stop the server if it still runs and give the port back to the pool."""
        if self._released:
            return
        self._released = True
        with anyio.CancelScope(shield=True):
            if self.process.returncode is None:
                try:
                    self.process.terminate()
                except ProcessLookupError:
                    pass
                with anyio.move_on_after(3):
                    await self.process.wait()
                if self.process.returncode is None:
                    try:
                        self.process.kill()
                    except ProcessLookupError:
                        pass
                    await self.process.wait()
            await self.process.aclose()
            for f in (self._out, self._err):
                f.unlink(missing_ok=True)
            await self.pool._give_back(self)


class IperfServerPool:
    """Starts and supervises one-shot iperf3 servers on a fixed set of ports."""

    def __init__(
        self,
        ports: Iterable[int],
        *,
        bind: str | None = None,
        binary: str = "iperf3",
        start_timeout: float = 5.0,
        netns: str | None = None,
        max_lease_s: float = 3600.0,
    ) -> None:
        self.ports = list(dict.fromkeys(int(p) for p in ports))
        if not self.ports:
            raise ValueError("the iperf3 port pool is empty")
        self.bind = bind
        self.binary = binary
        self.start_timeout = start_timeout
        self.netns = netns
        self.max_lease_s = max_lease_s
        self._free = list(self.ports)
        self._leases: dict[int, Lease] = {}
        self._cond = anyio.Condition()
        self._closed = False
        self._dir = Path(tempfile.mkdtemp(prefix="vetting-iperf3-"))

    async def __aenter__(self) -> IperfServerPool:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    @property
    def in_use(self) -> list[int]:
        return sorted(self._leases)

    async def acquire(self, timeout: float = 60.0) -> Lease:
        """Reserve a free port and start its server; waits while all are in use.

        A port some other program listens on is skipped (and retried on a later
        acquire); when every free port is taken by others, :class:`PortBusy`.
        """
        if self._closed:
            raise RuntimeError("the iperf3 server pool is closed")
        busy: list[int] = []
        try:
            while True:
                try:
                    with anyio.fail_after(timeout):
                        async with self._cond:
                            while not self._free:
                                await self._cond.wait()
                            port = self._free.pop(0)
                except TimeoutError:
                    raise PoolExhausted(
                        f"no free iperf3 port within {timeout:g}s (in use: {self.in_use})"
                    ) from None
                try:
                    lease = await self._start(port)
                except PortBusy as exc:
                    busy.append(port)
                    if not self._free:
                        raise PortBusy(f"{exc} (and every other free port of the pool: {busy})") from None
                    continue
                except BaseException:
                    busy.append(port)
                    raise
                self._leases[port] = lease
                return lease
        finally:
            if busy:
                async with self._cond:
                    self._free.extend(p for p in busy if p not in self._free)
                    self._cond.notify_all()

    async def _start(self, port: int) -> Lease:
        argv = [which(self.binary), *server_argv(port, bind=self.bind)[1:]]
        if self.netns:
            argv = [which("ip"), "netns", "exec", self.netns, *argv]
        elif port in listening_ports():
            raise PortBusy(f"port {port} is already in use by another program")
        out = self._dir / f"server-{port}.json"
        err = self._dir / f"server-{port}.err"
        with out.open("wb") as fo, err.open("wb") as fe:
            proc = await anyio.open_process(argv, stdin=DEVNULL, stdout=fo, stderr=fe, env=tool_env())
        lease = Lease(self, port, proc, out, err)
        deadline = time.monotonic() + self.start_timeout
        while port not in listening_ports(f"/proc/{proc.pid}/net"):
            if proc.returncode is not None or time.monotonic() > deadline:
                await anyio.sleep(0.05)
                why = lease._stderr() or out.read_text(errors="replace")[-300:]
                lease._released = True
                if proc.returncode is None:
                    proc.kill()
                await proc.wait()
                await proc.aclose()
                raise OSError(f"iperf3 server on port {port} did not start listening: {why.strip()[-300:]}")
            await anyio.sleep(0.02)
            # returncode is only refreshed by wait(); poll it without blocking
            with anyio.move_on_after(0):
                await proc.wait()
        log.debug("iperf3.server.started", port=port, pid=proc.pid)
        return lease

    async def _give_back(self, lease: Lease) -> None:
        self._leases.pop(lease.port, None)
        async with self._cond:
            if lease.port not in self._free:
                self._free.append(lease.port)
            self._cond.notify()

    @asynccontextmanager
    async def lease(self, timeout: float = 60.0) -> AsyncIterator[Lease]:
        lease = await self.acquire(timeout)
        try:
            yield lease
        finally:
            await lease.release()

    async def reap(self) -> list[int]:
        """Release leases whose server finished or that exceeded ``max_lease_s``."""
        now = time.monotonic()
        reaped = []
        for lease in list(self._leases.values()):
            with anyio.move_on_after(0):
                await lease.process.wait()
            if lease.finished or now - lease.started > self.max_lease_s:
                reaped.append(lease.port)
                await lease.release()
        return reaped

    async def aclose(self) -> None:
        """Kill every running server."""
        self._closed = True
        for lease in list(self._leases.values()):
            await lease.release()
        try:
            self._dir.rmdir()
        except OSError:
            pass
