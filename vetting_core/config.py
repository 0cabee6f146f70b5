"""Configuration: one YAML file plus environment overrides, validated at start-up.

An unknown key or a wrong value stops start-up with :class:`ConfigError` naming the
key (``$.server.port: Expected `int`, got `str```). Environment variables of the form
``VETTING__SECTION__KEY=value`` override the file (the value is parsed as a YAML
scalar, so ``VETTING__DISPATCHER__CONCURRENCY=5`` is a number). The reference is
``docs/configuration.md``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import msgspec

from .events import RunEventKind
from .safeyaml import YamlError, load_yaml

ENV_PREFIX = "VETTING__"
MAX_CONFIG_BYTES = 1 << 20


class ConfigError(ValueError):
    pass


class _Section(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    pass


class TlsSettings(_Section):
    """HTTPS on the server's own port (``docs/security.md``): both files or neither."""

    cert: str | None = None  # PEM certificate (chain)
    key: str | None = None  # its PEM private key
    hsts_max_age_s: int = 31_536_000  # Strict-Transport-Security on every reply while TLS is on; 0: none


class ServerSettings(_Section):
    host: str = "127.0.0.1"
    port: int = 8080
    public_url: str | None = None  # how agents and notification links reach the server
    data_dir: str = "./var"  # logs, artifacts, reports
    max_agent_body_bytes: int = 1 << 20
    max_artifact_bytes: int = 16 << 20  # largest artifact file an agent uploads (its own route)
    max_run_artifacts: int = 1000  # files one run's agent may upload (413 past it)
    max_run_artifact_bytes: int = 2 << 30  # and their total size
    max_operator_body_bytes: int = 16 << 20
    header_timeout_s: float = 10.0  # a request's line and headers must arrive within this (408 and closed)
    body_timeout_s: float = 60.0  # and its body within this, once the headers are in
    tls: TlsSettings = msgspec.field(default_factory=TlsSettings)


class DatabaseSettings(_Section):
    url: str = "sqlite:///./var/vetting.db"  # or postgresql://user@host:5432/db
    busy_timeout_ms: int = 5000
    writer_process: bool = True  # SQLite: sensor/log group commits in their own process (own GIL and core)
    pool_min: int = 1
    pool_max: int = 10


class DispatcherSettings(_Section):
    concurrency: int = 3  # runs booting/running at once (seed: sem=3)
    interval_s: float = 2.0


class TimeoutSettings(_Section):
    boot_s: float = 900.0  # WaitingBoot/Booting → Failed (boot timeout)
    heartbeat_interval_s: float = 10.0
    heartbeat_timeout_s: float = 60.0  # no heartbeat for this long → AgentLost
    stage_grace_s: float = 300.0  # added to a stage's own timeout


class PxeSettings(_Section):
    enabled: bool = False
    # "dhcp": dnsmasq hands out the addresses (dhcp_range); "proxy": beside the network's own
    # DHCP server, dnsmasq adds only the boot answers (proxy-DHCP, docs/pxe.md)
    mode: Literal["dhcp", "proxy"] = "dhcp"
    dnsmasq: str = "dnsmasq"
    interface: str | None = None
    dhcp_range: str | None = None  # e.g. "10.0.0.100,10.0.0.200,12h" (mode dhcp only)
    user: str = "root"  # dnsmasq drops to this user before serving TFTP: it must read tftp_root
    tftp_root: str = "./var/tftp"
    ipxe_dir: str = "/usr/lib/ipxe"  # where undionly.kpxe and ipxe.efi are copied from (Debian package ipxe)
    kernel_path: str = ""  # the live image's kernel, served at GET /pxe/vmlinuz
    initrd_path: str = ""  # its initrd, served at GET /pxe/initrd.img
    kernel_url: str = ""  # or URLs elsewhere (instead of kernel_path/initrd_path)
    initrd_url: str = ""
    cmdline_extra: str = ""
    router_advertisement: bool = False  # answer iPXE's IPv6 router solicitations (interface needs an IPv6 prefix)


class BootSettings(_Section):
    """What the server does around a boot provider's power-on (see docs/pxe.md)."""

    window_s: float = 900.0  # after the power-on, how long GET /ipxe/{mac} may hand out the run token (once)
    provider_timeout_s: float = 300.0  # one provider action, its own retries included
    power_off_after: bool = True  # power the host off after the verdict and when a hold expires
    power_off_delay_s: float = 60.0  # after Completed: the agent's own clean shutdown comes first


class HoldSettings(_Section):
    enabled: bool = True  # a failed run asks for a hold (SSH access) instead of powering off
    key_ttl_hours: float = 24.0


class NotifyTarget(_Section):
    name: str
    kind: str  # a notifier kind registered by a plugin: ntfy, discord, smtp, webhook...
    config: dict[str, Any] = {}
    timeout_s: float = 10.0
    retries: int = 3


class NotifyRoute(_Section):
    targets: list[str]
    events: list[str] = msgspec.field(default_factory=lambda: ["*"])  # RunEventKind names or "*"
    severities: list[Literal["critical", "warning", "info"]] = msgspec.field(
        default_factory=lambda: ["critical", "warning", "info"]
    )


class NotificationSettings(_Section):
    targets: list[NotifyTarget] = []
    routes: list[NotifyRoute] = []


class PeerSettings(_Section):
    """Test peers the orchestrator supervises for the agents (``ctx.peer(kind)``)."""

    iperf3_ports: str = "5201-5210"  # a range "A-B" or a list "5201,5203"; "" turns the pool off
    bind: str = "0.0.0.0"  # where the iperf3 servers listen
    host: str | None = None  # the address agents connect to; default: the one they reached the server at
    lease_timeout_s: float = 900.0  # a lease never given back is reaped after this long
    wait_s: float = 20.0  # how long a lease request waits for a free port before answering 503


def parse_ports(text: str) -> list[int]:
    """``"5201-5210"`` or ``"5201,5203,5300-5301"`` → ports; ``ValueError`` naming the part."""
    ports: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        low, _, high = part.partition("-")
        try:
            a, b = int(low), int(high or low)
        except ValueError:
            raise ValueError(f"{part!r} is not a port or a range A-B") from None
        if not (1 <= a <= b <= 65535):
            raise ValueError(f"{part!r} is not a range of ports between 1 and 65535")
        ports.extend(range(a, b + 1))
    return list(dict.fromkeys(ports))


class RetentionSettings(_Section):
    artifacts_days: float = 30.0
    logs_days: float = 30.0
    janitor_interval_minutes: float = 60.0


class FirmwareSettings(_Section):
    """Firmware campaigns (``vetting_server.firmware``)."""

    image_base_url: str | None = None  # how BMCs reach the server for SimpleUpdate; default server.public_url
    interval_s: float = 2.0  # how often running plans are stepped and an update's verify re-reads the inventory
    max_image_bytes: int = 2 << 30  # largest firmware image accepted into the artifact store
    auto_remediate: bool = False  # a Firmware stage failing on versions a known artifact fixes starts "update and re-vet"
    bmc_inventory_timeout_s: float = 30.0  # reading a host's BMC firmware inventory for its Firmware stage


class LoginSettings(_Section):
    """Password logins (``POST /api/v1/auth/token``): rate limit and failure audit."""

    free_attempts: int = 5  # failed attempts per user name, and per source address, before backoff
    backoff_s: float = 1.0  # then refused (429) for this long, doubling with each further failure
    max_backoff_s: float = 900.0
    audit_interval_s: float = 60.0  # failed logins go to the event log as one row per interval at most


class RunSettings(_Section):
    """Defaults of a new run."""

    default_profile: str = "quick"  # a run started without a profile (API, CLI, the web UI's form)


RUNTIME_KEYS: dict[str, str] = {
    "notifications.routes": "which events go to which configured targets (the targets, with their secrets, stay in the file)",
    "retention.artifacts_days": "days a finished run's artifact files are kept",
    "retention.logs_days": "days a finished run's log lines are kept",
    "runs.default_profile": "the profile of a run started without one",
    "boot.window_s": "how long after power-on GET /ipxe/{mac} may hand out the run token",
}
"""The settings the web UI may change at run time (stored in the database's ``settings``
table, validated exactly like this file, applied without a restart): each is read
where it is used, never copied at start-up. ``ui.overridable`` picks among them."""


class UiSettings(_Section):
    """The operator's web UI (``docs/ui.md``): sessions and what it may override."""

    enabled: bool = True
    session_idle_minutes: float = 30.0  # a session unused this long ends
    session_absolute_hours: float = 12.0  # and any session ends this long after its login
    overridable: list[str] = msgspec.field(default_factory=lambda: list(RUNTIME_KEYS))  # keys of RUNTIME_KEYS


class PluginSettings(_Section):
    disable: list[str] = []  # plugin (entry point) names; also $VETTING_DISABLE_PLUGINS


class LoggingSettings(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["console", "json"] = "console"


class Settings(_Section):
    server: ServerSettings = msgspec.field(default_factory=ServerSettings)
    database: DatabaseSettings = msgspec.field(default_factory=DatabaseSettings)
    dispatcher: DispatcherSettings = msgspec.field(default_factory=DispatcherSettings)
    timeouts: TimeoutSettings = msgspec.field(default_factory=TimeoutSettings)
    pxe: PxeSettings = msgspec.field(default_factory=PxeSettings)
    boot: BootSettings = msgspec.field(default_factory=BootSettings)
    hold: HoldSettings = msgspec.field(default_factory=HoldSettings)
    notifications: NotificationSettings = msgspec.field(default_factory=NotificationSettings)
    peers: PeerSettings = msgspec.field(default_factory=PeerSettings)
    retention: RetentionSettings = msgspec.field(default_factory=RetentionSettings)
    firmware: FirmwareSettings = msgspec.field(default_factory=FirmwareSettings)
    login: LoginSettings = msgspec.field(default_factory=LoginSettings)
    runs: RunSettings = msgspec.field(default_factory=RunSettings)
    ui: UiSettings = msgspec.field(default_factory=UiSettings)
    plugins: PluginSettings = msgspec.field(default_factory=PluginSettings)
    logging: LoggingSettings = msgspec.field(default_factory=LoggingSettings)


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX):].split("__") if p]
        if not path:
            continue
        try:
            value = load_yaml(raw, what=f"${name}") if raw.strip() else ""
        except YamlError:
            value = raw
        if isinstance(value, dict):
            # no setting reachable from the environment is a mapping: "a: b" is text
            value = raw
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"${name} conflicts with another VETTING__ variable")
        node[path[-1]] = value
    return tree


def _deep_merge(base: dict[str, Any], more: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in more.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def settings_from_dict(data: Mapping[str, Any], *, source: str = "configuration") -> Settings:
    try:
        settings = msgspec.convert(dict(data), Settings)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    _check_references(settings, source)
    return settings


def _check_references(settings: Settings, source: str) -> None:
    names = [t.name for t in settings.notifications.targets]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise ConfigError(f"{source}: $.notifications.targets: duplicate target name(s) {sorted(dupes)}")
    for i, route in enumerate(settings.notifications.routes):
        for target in route.targets:
            if target not in names:
                raise ConfigError(
                    f"{source}: $.notifications.routes[{i}].targets: unknown target {target!r} "
                    f"(defined: {names or 'none'})"
                )
    tls = settings.server.tls
    if (tls.cert is None) != (tls.key is None):
        raise ConfigError(f"{source}: $.server.tls needs both cert and key (PEM files), or neither")
    if settings.dispatcher.concurrency < 1:
        raise ConfigError(f"{source}: $.dispatcher.concurrency must be at least 1")
    for path, value, low, high in _ranges(settings):
        if not (low <= value <= high) or value != value:
            bound = f"between {low} and {high}" if high != float("inf") else f"at least {low}"
            raise ConfigError(f"{source}: {path} must be {bound}, got {value!r}")
    if settings.timeouts.heartbeat_timeout_s <= settings.timeouts.heartbeat_interval_s:
        raise ConfigError(
            f"{source}: $.timeouts.heartbeat_timeout_s must be longer than "
            "$.timeouts.heartbeat_interval_s (else every agent is declared lost)"
        )
    if settings.database.pool_min > settings.database.pool_max:
        raise ConfigError(
            f"{source}: $.database.pool_min ({settings.database.pool_min}) is larger than "
            f"$.database.pool_max ({settings.database.pool_max})"
        )
    kinds = {k.value for k in RunEventKind}
    for i, route in enumerate(settings.notifications.routes):
        for event in route.events:
            if event != "*" and event not in kinds:
                raise ConfigError(
                    f"{source}: $.notifications.routes[{i}].events: unknown event {event!r} "
                    f"(events: *, {', '.join(sorted(kinds))})"
                )
    for key in ("dnsmasq", "interface", "dhcp_range", "user", "tftp_root", "ipxe_dir", "kernel_path", "initrd_path",
                "kernel_url", "initrd_url", "cmdline_extra"):
        if any(c in (getattr(settings.pxe, key) or "") for c in "\r\n"):
            raise ConfigError(f"{source}: $.pxe.{key} must be one line (it goes into dnsmasq's configuration or the iPXE script)")
    for what in ("kernel", "initrd"):
        if getattr(settings.pxe, f"{what}_path") and getattr(settings.pxe, f"{what}_url"):
            raise ConfigError(f"{source}: $.pxe.{what}_path and $.pxe.{what}_url: give one, not both")
    if settings.pxe.enabled:
        for key in ("interface", "dhcp_range") if settings.pxe.mode == "dhcp" else ("interface",):
            if not getattr(settings.pxe, key):
                raise ConfigError(f"{source}: $.pxe.{key} is required when $.pxe.enabled is true")
    if settings.pxe.mode == "proxy":
        if settings.pxe.dhcp_range:
            raise ConfigError(f"{source}: $.pxe.dhcp_range: in proxy mode the network's own DHCP server hands out "
                              "the addresses (dnsmasq answers on the whole network of $.pxe.interface): remove it")
        # the script URL travels in the BOOTP file field (127 characters), not in option 67
        longest = len((settings.server.public_url or "").rstrip("/") + "/ipxe/00:00:00:00:00:00")
        if longest > 127:
            raise ConfigError(f"{source}: $.server.public_url is too long for proxy mode: the iPXE script URL "
                              f"(…/ipxe/<mac>) would be {longest} characters, the BOOTP file field holds 127")
    for key in settings.ui.overridable:
        if key not in RUNTIME_KEYS:
            raise ConfigError(
                f"{source}: $.ui.overridable: {key!r} cannot be changed at run time "
                f"(these can: {', '.join(RUNTIME_KEYS)})"
            )
    if not settings.runs.default_profile.strip():
        raise ConfigError(f"{source}: $.runs.default_profile must name a profile")
    try:
        parse_ports(settings.peers.iperf3_ports)
    except ValueError as exc:
        raise ConfigError(f"{source}: $.peers.iperf3_ports: {exc}") from None
    _check_database_url(settings.database.url, source)


def _check_database_url(url: str, source: str) -> None:
    """The forms the server opens: ``sqlite:///relative.db``, ``sqlite:////abs.db``,
    ``postgresql://user[:password]@host[:port]/database``. Anything else stops start-up
    here, with the right form in the message, rather than failing at open."""
    key = f"{source}: $.database.url"
    if url.startswith("sqlite:"):
        rest = url[len("sqlite:///"):] if url.startswith("sqlite:///") else None
        if not rest or rest.startswith(("?", ":memory:", "file:")):
            raise ConfigError(
                f"{key} {url!r} is not a SQLite file URL: write sqlite:///relative/path.db "
                "(three slashes) or sqlite:////absolute/path.db (four)"
            )
        return
    if url.startswith(("postgresql://", "postgres://")):
        from urllib.parse import urlsplit

        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError for a port that is not a number
        except ValueError as exc:
            raise ConfigError(f"{key}: {exc}: write postgresql://user@host:5432/database") from None
        if not parts.path.strip("/"):
            raise ConfigError(f"{key} names no database: write postgresql://user@host:5432/database")
        return
    raise ConfigError(f"{key} must start with sqlite:/// or postgresql://, got {url!r}")


def _ranges(settings: Settings) -> list[tuple[str, float, float, float]]:
    """(key path, value, lowest, highest) of every bounded number."""
    inf = float("inf")
    s = settings
    out = [
        ("$.server.port", s.server.port, 0, 65535),
        ("$.server.max_agent_body_bytes", s.server.max_agent_body_bytes, 1024, inf),
        ("$.server.max_artifact_bytes", s.server.max_artifact_bytes, 0, inf),
        ("$.server.max_operator_body_bytes", s.server.max_operator_body_bytes, 1024, inf),
        ("$.server.max_run_artifacts", s.server.max_run_artifacts, 0, inf),
        ("$.server.max_run_artifact_bytes", s.server.max_run_artifact_bytes, 0, inf),
        ("$.server.header_timeout_s", s.server.header_timeout_s, 0.1, 3600),
        ("$.server.body_timeout_s", s.server.body_timeout_s, 0.1, 86400),
        ("$.server.tls.hsts_max_age_s", s.server.tls.hsts_max_age_s, 0, inf),
        ("$.login.free_attempts", s.login.free_attempts, 1, inf),
        ("$.login.backoff_s", s.login.backoff_s, 0, inf),
        ("$.login.max_backoff_s", s.login.max_backoff_s, 0, inf),
        ("$.login.audit_interval_s", s.login.audit_interval_s, 0.01, inf),
        ("$.database.busy_timeout_ms", s.database.busy_timeout_ms, 0, inf),
        ("$.database.pool_min", s.database.pool_min, 1, inf),
        ("$.database.pool_max", s.database.pool_max, 1, inf),
        ("$.dispatcher.interval_s", s.dispatcher.interval_s, 0.01, inf),
        ("$.timeouts.boot_s", s.timeouts.boot_s, 1, inf),
        ("$.timeouts.heartbeat_interval_s", s.timeouts.heartbeat_interval_s, 0.1, inf),
        ("$.timeouts.heartbeat_timeout_s", s.timeouts.heartbeat_timeout_s, 0.1, inf),
        ("$.timeouts.stage_grace_s", s.timeouts.stage_grace_s, 0, inf),
        ("$.hold.key_ttl_hours", s.hold.key_ttl_hours, 0.01, inf),
        ("$.boot.window_s", s.boot.window_s, 10, inf),
        ("$.boot.provider_timeout_s", s.boot.provider_timeout_s, 1, 3600),
        ("$.boot.power_off_delay_s", s.boot.power_off_delay_s, 0, 86400),
        ("$.peers.lease_timeout_s", s.peers.lease_timeout_s, 1, inf),
        ("$.peers.wait_s", s.peers.wait_s, 0.1, 3600),
        ("$.retention.artifacts_days", s.retention.artifacts_days, 0, inf),
        ("$.retention.logs_days", s.retention.logs_days, 0, inf),
        ("$.retention.janitor_interval_minutes", s.retention.janitor_interval_minutes, 0.1, inf),
        ("$.firmware.interval_s", s.firmware.interval_s, 0.05, 3600),
        ("$.firmware.max_image_bytes", s.firmware.max_image_bytes, 1, inf),
        ("$.firmware.bmc_inventory_timeout_s", s.firmware.bmc_inventory_timeout_s, 1, 600),
        ("$.ui.session_idle_minutes", s.ui.session_idle_minutes, 1, 7 * 24 * 60),
        ("$.ui.session_absolute_hours", s.ui.session_absolute_hours, 0.1, 24 * 30),
    ]
    for i, t in enumerate(s.notifications.targets):
        out.append((f"$.notifications.targets[{i}].timeout_s", t.timeout_s, 0.1, inf))
        out.append((f"$.notifications.targets[{i}].retries", t.retries, 0, 100))
    return out


def load_settings(
    path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Load the YAML file at ``path`` (optional), apply ``VETTING__…`` overrides, validate."""
    environ = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    source = "configuration"
    if path is not None:
        source = str(path)
        try:
            # read one byte past the limit: a huge file is refused without loading it
            with Path(path).open("rb") as fh:
                text = fh.read(MAX_CONFIG_BYTES + 1)
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise ConfigError(f"cannot read configuration file {path}: {reason}") from None
        try:
            loaded = load_yaml(text, what=source, max_bytes=MAX_CONFIG_BYTES, int_keys=False)
        except YamlError as exc:
            raise ConfigError(str(exc)) from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{source}: the top level must be a mapping of sections")
        data = loaded
    try:
        overrides = _env_overrides(environ)
    except YamlError as exc:
        raise ConfigError(str(exc)) from None
    if overrides:
        data = _deep_merge(data, overrides)
        names = sorted(n for n in environ if n.startswith(ENV_PREFIX))
        source = f"{source} with {', '.join('$' + n for n in names)}"
    return settings_from_dict(data, source=source)
