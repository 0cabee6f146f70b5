"""Typed records that registration hooks return.

Registration hooks are synchronous and cheap: they only *describe* what a plugin
offers. The real work is the ``async`` callable each record carries (``StageSpec.run``,
``ProbeSpec.collect``, ``NotifierSpec.factory(...).send``...), driven by anyio.

Records are frozen dataclasses rather than msgspec Structs because they hold callables.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from .model import ThresholdRule

if TYPE_CHECKING:
    from .firmware import FirmwareImage, FirmwareItem, InstallOutcome, Progress
    from .context import StageContext
    from .events import RunEvent



StageRunner = Callable[["StageContext"], Awaitable[Any]]
"""``async def run(ctx) -> None``. Raise :class:`vetting_core.StageFailed`,
``StageSkipped`` or ``StageHold`` to end with that verdict; return to pass (unless a
sub-step failed)."""

AppliesCheck = Callable[[Mapping[str, Any]], "str | None"]
"""Given the inventory document, return ``None`` when the stage applies, else the
reason it is skipped (e.g. ``"no NVIDIA GPU found"``)."""


@dataclass(frozen=True, kw_only=True)
class StageSpec:
    """A stage type.

    ``order`` places the stage in the pipeline (built-ins use multiples of 100:
    InventoryCheck 100, SpecValidate 150, Firmware 200, SMART 300, CPUStress 400,
    Memory 450, Storage 500, Network 600, GPU 700, PSU 800, Burn 900); a plugin stage
    picks any number in between and slots in without touching the state machine.

    ``params`` maps a profile name (or ``"*"`` for every profile) to the stage's
    parameters in that profile; profiles and per-host overrides are merged on top.
    ``profiles`` names the profiles that include the stage by default.
    """

    name: str
    run: StageRunner
    order: int
    description: str = ""
    destructive: bool = False
    runs_on: Literal["agent", "orchestrator"] = "agent"
    requires: tuple[str, ...] = ()
    applies: AppliesCheck | None = None
    params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    thresholds: Sequence[ThresholdRule] = ()
    profiles: tuple[str, ...] = ("quick", "deep", "soak")
    timeout_s: float = 3600.0

    def params_for(self, profile: str) -> dict[str, Any]:
        merged: dict[str, Any] = dict(self.params.get("*", {}))
        merged.update(self.params.get(profile, {}))
        return merged


ProbeCollector = Callable[[], Awaitable[dict[str, Any]]]


@dataclass(frozen=True, kw_only=True)
class ProbeSpec:
    """An inventory collector. ``collect()`` returns a fragment ``{section: value}``.

    It must not raise for a missing tool or permission: return
    ``{"unavailable": {section: reason}}`` instead.
    """

    name: str
    collect: ProbeCollector
    sections: tuple[str, ...] = ()
    description: str = ""
    timeout_s: float = 60.0


@dataclass(frozen=True, kw_only=True)
class OperatorSpec:
    """A threshold operator.

    ``check(observed, threshold, nominal) -> bool`` is True when the sample is within
    the threshold. ``vector(values, threshold, nominal) -> list[bool]`` is an optional
    fast path over many samples of one series. ``baseline=True`` makes the engine pass
    ``observed - first value of the series in this stage`` (a counter delta).
    ``textual=True`` means the operator reads the sample's text (regex, eq on strings).
    ``parse_threshold(raw) -> parsed`` (optional) validates a structured threshold such
    as ``"10..20"`` once, when the rule is compiled; ``check`` then receives the parsed
    value. Raise ``ValueError`` with a reason for a bad threshold.
    """

    name: str
    check: Callable[[Any, Any, float], bool]
    description: str = ""
    vector: Callable[[list[Any], Any, float], list[bool]] | None = None
    baseline: bool = False
    textual: bool = False
    parse_threshold: Callable[[Any], Any] | None = None


@dataclass(frozen=True, kw_only=True)
class ProfileSpec:
    """A profile or, with ``fragment=True``, a fragment merged into an existing one.

    ``extends`` copies another profile first. ``include``/``exclude`` adjust the stage
    list (stages also opt in through ``StageSpec.profiles``); ``params`` maps stage
    name to parameter overrides; ``thresholds`` are added to the stages' defaults.
    """

    name: str
    description: str = ""
    extends: str | None = None
    fragment: bool = False
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    thresholds: Sequence[ThresholdRule] = ()
    non_destructive_only: bool = False


class Notifier(Protocol):
    async def send(self, event: RunEvent) -> None: ...


@dataclass(frozen=True, kw_only=True)
class NotifierSpec:
    """A notifier kind (``ntfy``, ``discord``...). ``factory(config)`` validates the
    target's config (converted with msgspec into ``config_type``) and returns an object
    with ``async send(event)``; raising means the delivery failed (it is retried)."""

    kind: str
    factory: Callable[[Any], Notifier]
    config_type: type | None = None
    description: str = ""


class BootProvider(Protocol):
    """What the orchestrator calls. Only ``power_on`` is required; a provider that can
    do more (a BMC) also has ``power_state``, ``power_off`` and ``clear_boot_override``,
    and the server uses them when present. Each returns a message for the run's
    history and raises :class:`vetting_core.boot.BootError` (or a subclass) when the
    host could not be driven."""

    async def power_on(self, host: Any, *, boot_target: str) -> str:
        """Make the host boot ``boot_target`` ("pxe") now: power it on, or reset it
        when it is already on."""
        ...


@dataclass(frozen=True, kw_only=True)
class BootProviderSpec:
    """A way to make a host boot from the network (``wol``, ``manual``, ``ipmi``...).

    ``factory(config)`` gets the host's ``boot_config`` converted into ``config_type``
    and returns a :class:`BootProvider`: ``async power_on(host, boot_target=...) ->
    message``, and optionally ``async power_state(host) -> "on" | "off"``,
    ``async power_off(host) -> message`` and ``async clear_boot_override(host) ->
    message`` (called after the verdict).
    """

    kind: str
    factory: Callable[[Any], BootProvider]
    config_type: type | None = None
    description: str = ""


class FirmwareProvider(Protocol):
    """What the orchestrator calls to update one host (see :mod:`vetting_core.firmware`).
    One object per host update; ``close()`` is always called at the end."""

    async def inventory(self) -> list[FirmwareItem]: ...

    async def install(self, image: FirmwareImage, progress: Progress) -> InstallOutcome: ...

    async def reboot(self, progress: Progress) -> str: ...

    async def close(self) -> None: ...


@dataclass(frozen=True, kw_only=True)
class FirmwareProviderSpec:
    """A way to read and update a host's firmware through its management controller
    (built in: ``redfish``).

    ``factory(config)`` gets the host's ``firmware_config`` (or, when the host has
    none and its boot provider is of the same kind, its ``boot_config``) converted
    into ``config_type``, and returns a :class:`FirmwareProvider`.
    """

    kind: str
    factory: Callable[[Any], FirmwareProvider]
    config_type: type | None = None
    description: str = ""


ReportRenderer = Callable[[Mapping[str, Any]], "ReportSection | None"]


@dataclass(frozen=True, kw_only=True)
class ReportSection:
    title: str
    html: str = ""  # trusted HTML fragment, inserted as-is into the HTML report
    data: Any = None  # JSON-serialisable, placed under report["sections"][name]


@dataclass(frozen=True, kw_only=True)
class ReportSectionSpec:
    """A contributed report section. ``render(report)`` receives the JSON report
    document and returns a :class:`ReportSection`, or ``None`` to contribute nothing."""

    name: str
    render: ReportRenderer
    order: int = 1000


@dataclass(frozen=True, kw_only=True)
class EventObserverSpec:
    """Receives every run event: ``async handle(event)``. Failures are logged."""

    name: str
    handle: Callable[["RunEvent"], Awaitable[None]]




class PeerLease(Protocol):
    """One leased port of a :class:`PeerPool`, with its server running."""

    port: int
    started: float  # time.monotonic() when it was leased: the orchestrator reaps old leases

    async def release(self) -> None: ...


class PeerPool(Protocol):
    """Test-peer servers the orchestrator supervises on a fixed set of ports: one client
    per port at a time, across every run."""

    async def acquire(self, timeout: float) -> PeerLease:
        """A free port with a fresh server; ``TimeoutError`` when every port stays leased
        for ``timeout`` seconds, ``OSError`` when a server cannot start."""
        ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True, kw_only=True)
class PeerPoolSpec:
    """A kind of test peer the orchestrator can offer its agents (``iperf3``).

    ``factory(ports, bind=..., max_lease_s=...)`` returns a :class:`PeerPool`; the
    orchestrator makes one when its configuration lists ports for the kind and
    ``tool`` (the server binary, when there is one) is installed. A stage leases a
    peer with ``ctx.peer(kind)``. Blocking the plugin that registers the kind takes
    the pool, and its code, out of the orchestrator.
    """

    kind: str
    factory: Callable[..., PeerPool]
    tool: str | None = None
    description: str = ""
