"""Hook specifications of the ``vetting`` project.

Every hook is a *registration* hook: synchronous, cheap, and returning a list of
typed records (see :mod:`vetting_core.records`). The framework calls each plugin's
implementation separately so that a plugin that raises is reported by name and
skipped, and two plugins registering the same name are named together in the error.

Each docstring carries a runnable example; ``docs/plugins.md`` documents every hook
and a test fails when one is missing there.
"""

from __future__ import annotations

from collections.abc import Iterable

from ._markers import hookspec
from .records import (
    BootProviderSpec,
    EventObserverSpec,
    FirmwareProviderSpec,
    NotifierSpec,
    OperatorSpec,
    PeerPoolSpec,
    ProbeSpec,
    ProfileSpec,
    ReportSectionSpec,
    StageSpec,
)


@hookspec
def vetting_stages() -> Iterable[StageSpec]:
    """Register stage types.

    Example::

        from vetting_core import StageSpec, hookimpl

        async def run_memtester(ctx):
            result = await ctx.run_tool(["memtester", f"{ctx.params['mib']}M", "1"])
            ctx.measure("memtester", "passes", 1.0 if "ok" in result.stdout else 0.0)

        @hookimpl
        def vetting_stages():
            return [StageSpec(name="Memtester", order=460, run=run_memtester,
                              params={"quick": {"mib": 256}, "deep": {"mib": 4096}})]
    """


@hookspec
def vetting_probes() -> Iterable[ProbeSpec]:
    """Register inventory probes; each returns a fragment merged into the inventory.

    Example::

        from vetting_core import ProbeSpec, hookimpl

        async def collect_tpm():
            try:
                version = open("/sys/class/tpm/tpm0/tpm_version_major").read().strip()
            except OSError as exc:
                return {"unavailable": {"tpm": str(exc)}}
            return {"tpm": {"version": version}}

        @hookimpl
        def vetting_probes():
            return [ProbeSpec(name="tpm", collect=collect_tpm, sections=("tpm",))]
    """


@hookspec
def vetting_threshold_operators() -> Iterable[OperatorSpec]:
    """Register threshold operators (built in: lt, lte, gt, gte, within_pct, eq, ne,
    regex, delta_lte).

    Example::

        from vetting_core import OperatorSpec, hookimpl

        @hookimpl
        def vetting_threshold_operators():
            # passes when the observed value is a multiple of the threshold
            return [OperatorSpec(name="multiple_of",
                                 check=lambda observed, threshold, nominal:
                                     observed % threshold == 0)]
    """


@hookspec
def vetting_profiles() -> Iterable[ProfileSpec]:
    """Register profiles (``quick``, ``deep``, ``soak`` are built in) or fragments that
    extend an existing profile.

    Example::

        from vetting_core import ProfileSpec, ThresholdRule, hookimpl

        @hookimpl
        def vetting_profiles():
            return [
                ProfileSpec(name="gpu-only", extends="quick",
                            exclude=("Storage", "Network")),
                ProfileSpec(name="deep", fragment=True,
                            thresholds=[ThresholdRule(kind="temp", key="gpu/*",
                                                      op="lte", threshold=85)]),
            ]
    """


@hookspec
def vetting_notifiers() -> Iterable[NotifierSpec]:
    """Register notifier kinds; targets in the config refer to them by ``kind``.

    Example::

        import httpx, msgspec
        from vetting_core import NotifierSpec, hookimpl

        class GotifyConfig(msgspec.Struct):
            url: str
            token: str

        class Gotify:
            def __init__(self, config: GotifyConfig):
                self.config = config

            async def send(self, event):
                async with httpx.AsyncClient(timeout=10) as client:
                    r = await client.post(f"{self.config.url}/message",
                                          params={"token": self.config.token},
                                          json={"title": event.kind, "message": event.message})
                    r.raise_for_status()

        @hookimpl
        def vetting_notifiers():
            return [NotifierSpec(kind="gotify", factory=Gotify, config_type=GotifyConfig)]
    """


@hookspec
def vetting_boot_providers() -> Iterable[BootProviderSpec]:
    """Register boot providers: how the orchestrator makes a host PXE-boot.

    ``power_on`` is required; ``power_state``, ``power_off`` and
    ``clear_boot_override`` are used after the verdict when present. Raise
    :class:`vetting_core.BootError` (or ``BmcUnreachable``, ``BmcAuthFailed``,
    ``BmcRefused``) with a message for the run; secrets are referenced, never stored in
    the host's ``boot_config`` (built in: ``ipmi``, ``redfish``, ``wol``, ``manual``).

    Example::

        import httpx, msgspec
        from vetting_core import BootError, BootProviderSpec, hookimpl
        from vetting_core.boot import read_secret

        class PduConfig(msgspec.Struct):
            url: str          # a switched PDU's API
            outlet: int
            token_env: str    # an environment variable of the server holds its token

        class PduBoot:
            def __init__(self, config: PduConfig):
                self.c = config

            async def power_on(self, host, *, boot_target="pxe"):
                token = read_secret(env=self.c.token_env, file=None, what=f"PDU {self.c.url}")
                async with httpx.AsyncClient() as client:
                    r = await client.post(f"{self.c.url}/outlets/{self.c.outlet}/on",
                                          headers={"Authorization": f"Bearer {token}"})
                if r.status_code != 200:
                    raise BootError(f"PDU {self.c.url} refused outlet {self.c.outlet} ({r.status_code})")
                return f"outlet {self.c.outlet} on: {host.name} boots from the network"

        @hookimpl
        def vetting_boot_providers():
            return [BootProviderSpec(kind="pdu", factory=PduBoot, config_type=PduConfig)]
    """


@hookspec
def vetting_report_sections() -> Iterable[ReportSectionSpec]:
    """Contribute a section to every run report.

    Example::

        from vetting_core import ReportSection, ReportSectionSpec, hookimpl

        def render(report):
            temps = [s for s in report["series"] if s["kind"] == "temp"]
            if not temps:
                return None
            hottest = max(temps, key=lambda s: s["max"])
            return ReportSection(title="Hottest sensor",
                                 html=f"<p>{hottest['key']}: {hottest['max']} °C</p>",
                                 data={"key": hottest["key"], "max": hottest["max"]})

        @hookimpl
        def vetting_report_sections():
            return [ReportSectionSpec(name="hottest", render=render)]
    """


@hookspec
def vetting_event_observers() -> Iterable[EventObserverSpec]:
    """Observe run events (StageFailed, SpecMismatch, HoldingOpened, RunCompleted,
    RunFailed, AgentLost) as they happen. Delivery never blocks the run.

    Example::

        from vetting_core import EventObserverSpec, hookimpl

        async def to_cmdb(event):
            if event.kind == "RunCompleted":
                print(f"host {event.host_name} is healthy again")

        @hookimpl
        def vetting_event_observers():
            return [EventObserverSpec(name="cmdb", handle=to_cmdb)]
    """


@hookspec
def vetting_firmware_providers() -> Iterable[FirmwareProviderSpec]:
    """Register firmware-update providers: how the orchestrator reads a host's firmware
    inventory and installs an image through its BMC (built in: ``redfish``).

    Example::

        import msgspec
        from vetting_core import FirmwareItem, FirmwareProviderSpec, InstallOutcome, hookimpl

        class VendorConfig(msgspec.Struct):
            address: str
            token_env: str

        class VendorTool:
            def __init__(self, config: VendorConfig):
                self.c = config

            async def inventory(self):
                return [FirmwareItem(id="BIOS", name="System BIOS", version="2.1.0", component="bios")]

            async def install(self, image, progress):
                await progress("download", None, f"pushing {image.filename}")
                ...  # hand image.path (verified against image.sha256) to the vendor's tool
                await progress("install", 100, "flashed")
                return InstallOutcome(message="flashed", reboot_required=True)

            async def reboot(self, progress):
                return "power cycled"

            async def close(self):
                pass

        @hookimpl
        def vetting_firmware_providers():
            return [FirmwareProviderSpec(kind="vendor", factory=VendorTool, config_type=VendorConfig)]
    """


@hookspec
def vetting_peer_pools() -> Iterable[PeerPoolSpec]:
    """Register test peers the orchestrator supervises for its agents: servers on a
    fixed set of ports that a stage leases one at a time (``ctx.peer(kind)``), so two
    hosts under test never share, and halve, one server (built in: ``iperf3``, by the
    ``network`` plugin). Only the orchestrator asks for pools.

    Example::

        import time, anyio
        from vetting_core import PeerPoolSpec, hookimpl

        class NetperfLease:
            def __init__(self, pool, port, process):
                self.pool, self.port, self.process = pool, port, process
                self.started = time.monotonic()

            async def release(self):
                self.process.terminate()
                self.pool.free.append(self.port)

        class NetperfPool:
            def __init__(self, ports, *, bind=None, max_lease_s=3600.0):
                self.free, self.bind = list(ports), bind or "0.0.0.0"

            async def acquire(self, timeout):
                with anyio.fail_after(timeout):  # TimeoutError: every port is leased
                    while not self.free:
                        await anyio.sleep(0.1)
                port = self.free.pop()
                process = await anyio.open_process(["netserver", "-D", "-L", self.bind, "-p", str(port)])
                return NetperfLease(self, port, process)

            async def aclose(self):
                pass

        @hookimpl
        def vetting_peer_pools():
            return [PeerPoolSpec(kind="netperf", factory=NetperfPool, tool="netserver")]
    """
