"""The sensor sidecar: temperatures, fans, power, voltages and throttling at 1 Hz.

It runs beside every stage, so a CPU stress that passes while the package sits at
100 °C and throttles is still caught (by the thresholds on these samples). Samples are
tagged with the stage that is running and go through the same spool as everything
else; between stages the sidecar is idle.

Sources (each optional; what the machine lacks is simply absent):

- hwmon (``/sys/class/hwmon/hwmon*``): ``temp*_input`` (m°C) → kind ``temp`` in °C,
  ``fan*_input`` → ``fan`` in RPM, ``power*_input``/``power*_average`` (µW) → ``power``
  in W, ``in*_input`` (mV) → ``volt`` in V. Key ``<chip>/<label>``; discovery, order
  and keys are :mod:`vetting_core.hwmon`'s, shared with the stages.
- CPU throttle counters (``/sys/devices/system/cpu/cpu*/thermal_throttle``): kind
  ``throttle``, keys ``core_throttle_count`` (sum over logical CPUs) and
  ``package_throttle_count`` (sum over packages); judge them with ``delta_lte``.
- ``ipmitool sdr`` when a BMC device node exists: every ``ipmi_interval_s`` (default
  30 s; the BMC is slow and shared), in the background so it never delays a tick.
- NVML when :mod:`pynvml` imports and finds a GPU: per GPU ``temp``, ``power``,
  ``fan`` and the clock-throttle reasons bit mask (kind ``throttle``).

Cheapness matters (the agent must not disturb what it measures): sysfs files are
discovered once and kept open, each tick is one ``pread`` per file.
"""

from __future__ import annotations

import glob
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import anyio
import structlog

from vetting_core import hwmon
from vetting_core.context import utcnow
from vetting_core.model import Measurement
from vetting_core.tools import ToolNotFound, run_tool

log = structlog.get_logger()


class Source(Protocol):
    name: str

    def read(self) -> list[tuple[str, str, float, str]]:
        """``(kind, key, value, unit)`` tuples; never raises for a flaky sensor."""
        ...

    def close(self) -> None: ...


def _read_int(fd: int) -> int | None:
    try:
        raw = os.pread(fd, 64, 0)
        return int(raw.strip())
    except (OSError, ValueError):  # EIO/ENODATA from a sensor that is not ready
        return None


# -- hwmon --------------------------------------------------------------------------
@dataclass
class _Channel:
    kind: str
    key: str
    divisor: float
    unit: str
    fd: int


class HwmonSource:
    """hwmon channels as :func:`vetting_core.hwmon.discover` finds and names them (the
    stages read the same keys), kept open and re-read with ``pread`` each tick."""

    name = "hwmon"

    def __init__(self, root: str | Path = hwmon.HWMON_ROOT) -> None:
        self.channels: list[_Channel] = []
        for ch in hwmon.discover(root):
            try:
                fd = os.open(ch.path, os.O_RDONLY)
            except OSError:
                continue
            self.channels.append(_Channel(ch.kind, ch.key, ch.divisor, ch.unit, fd))

    def read(self) -> list[tuple[str, str, float, str]]:
        out = []
        for ch in self.channels:
            raw = _read_int(ch.fd)
            if raw is not None:
                out.append((ch.kind, ch.key, raw / ch.divisor, ch.unit))
        return out

    def close(self) -> None:
        for ch in self.channels:
            try:
                os.close(ch.fd)
            except OSError:
                pass
        self.channels = []


# -- CPU throttling -------------------------------------------------------------------
class ThrottleSource:
    name = "throttle"

    def __init__(self, root: str | Path = "/sys/devices/system/cpu") -> None:
        self.core_fds: list[int] = []
        self.package_fds: list[int] = []
        packages: set[str] = set()
        for cpu_dir in sorted(glob.glob(os.path.join(str(root), "cpu[0-9]*"))):
            tdir = os.path.join(cpu_dir, "thermal_throttle")
            if not os.path.isdir(tdir):
                continue
            try:
                self.core_fds.append(os.open(os.path.join(tdir, "core_throttle_count"), os.O_RDONLY))
            except OSError:
                pass
            try:
                package = Path(cpu_dir, "topology", "physical_package_id").read_text().strip()
            except OSError:
                package = cpu_dir
            if package not in packages:
                try:
                    self.package_fds.append(os.open(os.path.join(tdir, "package_throttle_count"), os.O_RDONLY))
                    packages.add(package)
                except OSError:
                    pass

    @property
    def available(self) -> bool:
        return bool(self.core_fds or self.package_fds)

    def read(self) -> list[tuple[str, str, float, str]]:
        out = []
        for key, fds in (("core_throttle_count", self.core_fds), ("package_throttle_count", self.package_fds)):
            if not fds:
                continue
            values = [_read_int(fd) for fd in fds]
            got = [v for v in values if v is not None]
            if got:
                out.append(("throttle", key, float(sum(got)), "events"))
        return out

    def close(self) -> None:
        for fd in [*self.core_fds, *self.package_fds]:
            try:
                os.close(fd)
            except OSError:
                pass
        self.core_fds, self.package_fds = [], []


# -- IPMI -----------------------------------------------------------------------------
_IPMI_UNITS = {
    "degrees c": ("temp", "C"),
    "rpm": ("fan", "RPM"),
    "watts": ("power", "W"),
    "volts": ("volt", "V"),
}
IPMI_DEVICES = ("/dev/ipmi0", "/dev/ipmi/0", "/dev/ipmidev/0")


def parse_ipmitool_sdr(text: str) -> list[tuple[str, str, float, str]]:
    """Parse ``ipmitool sdr`` (``Name | 45 degrees C | ok``) or ``sdr elist``
    (``Name | 04h | ok | 7.1 | 45 degrees C``). Sensors without a numeric reading
    (``no reading``, ``disabled``, discrete ``0x00``, ``unspecified`` units) are left out."""
    out = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split("|")]
        if len(parts) < 3 or not parts[0]:
            continue
        for reading in parts[1:]:
            m = re.match(r"^(-?\d+(?:\.\d+)?)\s+(.+)$", reading)
            if not m:
                continue
            mapped = _IPMI_UNITS.get(m.group(2).strip().lower())
            if mapped is not None:
                kind, unit = mapped
                out.append((kind, f"ipmi/{parts[0]}", float(m.group(1)), unit))
            break
    return out


class IpmiSource:
    """Reads the BMC's sensors through ``ipmitool sdr`` at most every ``interval_s``.

    ``read()`` returns the latest completed reading once (so a slow BMC yields a sample
    every ``interval_s`` rather than stale repeats); ``refresh()`` runs the tool.
    """

    name = "ipmi"

    def __init__(self, argv: Sequence[str] = ("ipmitool", "sdr"), interval_s: float = 30.0, timeout_s: float = 20.0) -> None:
        self.argv = list(argv)
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self._latest: list[tuple[str, str, float, str]] = []
        self._last_run = -1e18
        self._running = False
        self.failures = 0

    @staticmethod
    def bmc_present() -> bool:
        return any(os.path.exists(p) for p in IPMI_DEVICES)

    def due(self) -> bool:
        return not self._running and time.monotonic() - self._last_run >= self.interval_s

    async def refresh(self) -> None:
        self._running = True
        self._last_run = time.monotonic()
        try:
            result = await run_tool(self.argv, timeout=self.timeout_s)
            readings = parse_ipmitool_sdr(result.stdout)
            if not readings:
                self.failures += 1
                log.warning("sidecar.ipmi_no_readings", rc=result.returncode, stderr=result.stderr[:200])
            self._latest = readings
        except (ToolNotFound, OSError) as exc:
            self.failures += 1
            log.warning("sidecar.ipmi_failed", error=str(exc))
        finally:
            self._running = False

    def read(self) -> list[tuple[str, str, float, str]]:
        out, self._latest = self._latest, []
        return out

    def close(self) -> None:
        pass


# -- NVML -------------------------------------------------------------------------------
class NvmlSource:
    name = "nvml"

    def __init__(self, nvml: Any) -> None:
        self.nvml = nvml
        self.handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
        self._throttle = getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None) or getattr(
            nvml, "nvmlDeviceGetCurrentClocksThrottleReasons", None
        )
        self._broken: set[tuple[int, str]] = set()

    @classmethod
    def try_open(cls) -> NvmlSource | None:
        try:
            import pynvml  # type: ignore[import-not-found]
        except ImportError:
            return None
        try:
            pynvml.nvmlInit()
            if pynvml.nvmlDeviceGetCount() == 0:
                pynvml.nvmlShutdown()
                return None
            return cls(pynvml)
        except Exception as exc:  # no driver, no device: NVML raises its own errors
            log.info("sidecar.nvml_unavailable", error=str(exc))
            return None

    def _get(self, i: int, what: str, fn: Callable[[], Any]) -> Any:
        if (i, what) in self._broken:
            return None
        try:
            return fn()
        except Exception:  # NotSupported on this board: stop asking
            self._broken.add((i, what))
            return None

    def read(self) -> list[tuple[str, str, float, str]]:
        n = self.nvml
        out = []
        for i, h in enumerate(self.handles):
            temp = self._get(i, "temp", lambda h=h: n.nvmlDeviceGetTemperature(h, n.NVML_TEMPERATURE_GPU))
            if temp is not None:
                out.append(("temp", f"gpu{i}/core", float(temp), "C"))
            power = self._get(i, "power", lambda h=h: n.nvmlDeviceGetPowerUsage(h))
            if power is not None:
                out.append(("power", f"gpu{i}/board", power / 1000.0, "W"))
            fan = self._get(i, "fan", lambda h=h: n.nvmlDeviceGetFanSpeed(h))
            if fan is not None:
                out.append(("fan", f"gpu{i}/fan", float(fan), "%"))
            if self._throttle is not None:
                reasons = self._get(i, "throttle", lambda h=h: self._throttle(h))
                if reasons is not None:
                    out.append(("throttle", f"gpu{i}/clock_event_reasons", float(reasons), "mask"))
        return out

    def close(self) -> None:
        try:
            self.nvml.nvmlShutdown()
        except Exception:
            pass


def default_sources(*, ipmi_interval_s: float = 30.0, sysfs_root: str = "/sys") -> list[Any]:
    """Everything this machine offers; absent hardware contributes no source."""
    sources: list[Any] = []
    hw = HwmonSource(os.path.join(sysfs_root, "class/hwmon"))
    if hw.channels:
        sources.append(hw)
    th = ThrottleSource(os.path.join(sysfs_root, "devices/system/cpu"))
    if th.available:
        sources.append(th)
    if IpmiSource.bmc_present():
        sources.append(IpmiSource(interval_s=ipmi_interval_s))
    nv = NvmlSource.try_open()
    if nv is not None:
        sources.append(nv)
    return sources


class SensorSidecar:
    """Samples every source each ``interval_s`` while ``stage`` is set.

    ``emit`` receives each :class:`Measurement` (the agent's spool sink, or local
    mode's memory sink). Set ``stage`` to the running stage's name, ``None`` between
    stages.
    """

    def __init__(
        self,
        emit: Callable[[Measurement], None],
        *,
        sources: Sequence[Any] | None = None,
        interval_s: float = 1.0,
        ipmi_interval_s: float = 30.0,
    ) -> None:
        self.emit = emit
        self.sources = list(sources) if sources is not None else default_sources(ipmi_interval_s=ipmi_interval_s)
        self.interval_s = interval_s
        self.stage: str | None = None
        self.ticks = 0
        self.samples = 0

    def describe(self) -> str:
        if not self.sources:
            return "no sensors found (no hwmon, no throttle counters, no BMC, no NVML GPU)"
        parts = []
        for s in self.sources:
            if isinstance(s, HwmonSource):
                parts.append(f"hwmon ({len(s.channels)} channels)")
            else:
                parts.append(s.name)
        return ", ".join(parts)

    def tick(self) -> int:
        """Read every source once (if a stage is running); returns samples emitted."""
        stage = self.stage
        if stage is None:
            return 0
        ts = utcnow()
        n = 0
        for source in self.sources:
            for kind, key, value, unit in source.read():
                self.emit(Measurement(ts=ts, stage=stage, kind=kind, key=key, value=value, unit=unit))
                n += 1
        self.ticks += 1
        self.samples += n
        return n

    async def run(self) -> None:
        if not self.sources:
            return
        async with anyio.create_task_group() as tg:
            next_at = anyio.current_time()
            try:
                while True:
                    next_at += self.interval_s
                    now = anyio.current_time()
                    if next_at < now:  # we were suspended: do not burst to catch up
                        next_at = now + self.interval_s
                    await anyio.sleep(next_at - now)
                    if self.stage is None:
                        continue
                    for source in self.sources:
                        if isinstance(source, IpmiSource) and source.due():
                            tg.start_soon(source.refresh)
                    self.tick()
            finally:
                for source in self.sources:
                    source.close()
