"""The plugin manager factory and the registry of what plugins registered.

There is no module-global plugin manager: the server, the agent and every test build
their own with :func:`create_plugin_manager` and turn it into a :class:`Registry` with
:func:`build_registry` (or both at once with :func:`load_registry`).

Loading order (as in tox): block list → entry points of the ``vetting`` group (the
built-ins are registered there too, so what is installed is what runs) → plugins
passed explicitly → ``check_pending()``. A plugin that fails to import, or whose hook
raises, is reported in ``Registry.broken`` and skipped; two plugins registering the
same stage, probe, operator, notifier kind, boot or firmware provider kind, report
section or observer name raise :class:`DuplicateNameError` naming both.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy
import structlog

from . import hookspecs
from ._markers import PROJECT
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

log = structlog.get_logger()

ENTRY_POINT_GROUP = "vetting"
DISABLE_ENV = "VETTING_DISABLE_PLUGINS"


class PluginError(Exception):
    pass


class DuplicateNameError(PluginError):
    pass


class UnknownNameError(PluginError, KeyError):
    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


@dataclass
class PluginInfo:
    name: str
    module: str
    distribution: str | None = None
    version: str | None = None
    registers: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class BrokenPlugin:
    name: str
    stage: str  # "import" or the hook that raised
    error: str  # one line
    traceback: str = ""


@dataclass
class LoadReport:
    """What happened while loading entry points: for ``vetting plugins list``."""

    blocked: list[str] = field(default_factory=list)
    broken: list[BrokenPlugin] = field(default_factory=list)
    distributions: dict[str, tuple[str, str]] = field(default_factory=dict)


# hook name -> (registry attribute, record type, attribute holding the unique name)
_HOOKS: dict[str, tuple[str, type, str]] = {
    "vetting_stages": ("stages", StageSpec, "name"),
    "vetting_probes": ("probes", ProbeSpec, "name"),
    "vetting_threshold_operators": ("operators", OperatorSpec, "name"),
    "vetting_notifiers": ("notifiers", NotifierSpec, "kind"),
    "vetting_boot_providers": ("boot_providers", BootProviderSpec, "kind"),
    "vetting_report_sections": ("report_sections", ReportSectionSpec, "name"),
    "vetting_event_observers": ("observers", EventObserverSpec, "name"),
    "vetting_firmware_providers": ("firmware_providers", FirmwareProviderSpec, "kind"),
    "vetting_peer_pools": ("peer_pools", PeerPoolSpec, "kind"),
}


@dataclass
class Registry:
    """Everything the installed (and not blocked) plugins registered."""

    stages: dict[str, StageSpec] = field(default_factory=dict)
    probes: dict[str, ProbeSpec] = field(default_factory=dict)
    operators: dict[str, OperatorSpec] = field(default_factory=dict)
    notifiers: dict[str, NotifierSpec] = field(default_factory=dict)
    boot_providers: dict[str, BootProviderSpec] = field(default_factory=dict)
    report_sections: dict[str, ReportSectionSpec] = field(default_factory=dict)
    observers: dict[str, EventObserverSpec] = field(default_factory=dict)
    firmware_providers: dict[str, FirmwareProviderSpec] = field(default_factory=dict)
    peer_pools: dict[str, PeerPoolSpec] = field(default_factory=dict)
    profile_specs: list[tuple[str, ProfileSpec]] = field(default_factory=list)
    plugins: list[PluginInfo] = field(default_factory=list)
    broken: list[BrokenPlugin] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    owners: dict[tuple[str, str], str] = field(default_factory=dict)

    def stage(self, name: str) -> StageSpec:
        try:
            return self.stages[name]
        except KeyError:
            known = ", ".join(sorted(self.stages)) or "none"
            raise UnknownNameError(f"unknown stage {name!r} (installed stages: {known})") from None

    def owner(self, what: str, name: str) -> str:
        """Which plugin registered ``name`` in category ``what`` (e.g. ``("stages", "SMART")``)."""
        return self.owners[(what, name)]


def blocked_from_env(environ: os._Environ[str] | dict[str, str] | None = None) -> list[str]:
    raw = (environ if environ is not None else os.environ).get(DISABLE_ENV, "")
    return [name.strip() for name in raw.split(",") if name.strip()]


def create_plugin_manager(
    *,
    blocked: Iterable[str] = (),
    entry_points: bool = True,
    plugins: Sequence[tuple[str, Any]] = (),
    environ: dict[str, str] | None = None,
) -> tuple[pluggy.PluginManager, LoadReport]:
    """Build a plugin manager.

    ``blocked`` (plus ``$VETTING_DISABLE_PLUGINS``, comma-separated) names plugins that
    must not load; ``plugins`` adds ``(name, module_or_object)`` pairs by hand (tests).
    Returns the manager and a :class:`LoadReport` (blocked, broken, distributions).

    Nothing a plugin does here is fatal: a plugin that fails to import, whose hook
    implementations do not match the specifications (a misspelt hook name, a wrong
    argument), or whose entry-point name is already taken by another distribution is
    reported in ``LoadReport.broken`` and left out.
    """
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    report = LoadReport(blocked=sorted({*blocked, *blocked_from_env(environ)}))
    for name in report.blocked:
        pm.set_blocked(name)
    if entry_points:
        _load_entry_points(pm, report)
    for name, plugin in plugins:
        if not pm.is_blocked(name):
            _register(pm, report, name, plugin)
    _drop_unknown_hooks(pm, report)
    pm.check_pending()
    return pm, report


def _broken(report: LoadReport, name: str, stage: str, exc: BaseException) -> None:
    report.broken.append(
        BrokenPlugin(
            name=name,
            stage=stage,
            error=f"{type(exc).__name__}: {exc}",
            traceback="".join(traceback.format_exception(exc)),
        )
    )
    log.error("plugin.broken", plugin=name, stage=stage, error=str(exc))


def _register(pm: pluggy.PluginManager, report: LoadReport, name: str, plugin: Any) -> bool:
    try:
        pm.register(plugin, name=name)
    except Exception as exc:  # PluginValidationError: hook arguments do not match the spec
        _broken(report, name, "register", exc)
        return False
    return True


def _drop_unknown_hooks(pm: pluggy.PluginManager, report: LoadReport) -> None:
    """Unregister plugins implementing a ``vetting_*`` hook that has no specification
    (usually a misspelling such as ``vetting_stage``), which pluggy's ``check_pending``
    would otherwise turn into an error for everyone."""
    for hook_name, caller in vars(pm.hook).items():
        if not isinstance(caller, pluggy.HookCaller) or caller.has_spec():
            continue
        for impl in caller.get_hookimpls():
            if impl.optionalhook:
                continue
            plugin_name = impl.plugin_name
            if pm.get_plugin(plugin_name) is None:
                continue
            known = ", ".join(sorted(n for n in dir(hookspecs) if n.startswith("vetting_")))
            _broken(
                report,
                plugin_name,
                "register",
                PluginError(f"implements unknown hook {hook_name!r} (hooks: {known})"),
            )
            pm.unregister(name=plugin_name)
            report.distributions.pop(plugin_name, None)


def _load_entry_points(pm: pluggy.PluginManager, report: LoadReport) -> None:
    seen: dict[str, tuple[str, str] | None] = {}
    for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        dist = (ep.dist.name, ep.dist.version) if ep.dist is not None else None
        if ep.name in seen:
            # the same distribution found twice on sys.path is harmless; two
            # distributions claiming one plugin name is reported (the first one wins)
            first = seen[ep.name]
            if first is not None and dist is not None and first[0] != dist[0]:
                _broken(
                    report,
                    ep.name,
                    "import",
                    PluginError(
                        f"entry point {ep.name!r} of distribution {dist[0]} {dist[1]} "
                        f"({ep.value}) is already provided by {first[0]} {first[1]}; skipped"
                    ),
                )
            continue
        seen[ep.name] = dist
        if pm.is_blocked(ep.name) or pm.has_plugin(ep.name):
            continue
        try:
            plugin = ep.load()
        except Exception as exc:  # a broken third-party plugin is never fatal
            _broken(report, ep.name, "import", exc)
            continue
        if _register(pm, report, ep.name, plugin) and dist is not None:
            report.distributions[ep.name] = dist


def _call_registration_hook(hook_name: str, impl: Any) -> list[Any]:
    if impl.hookwrapper or getattr(impl, "wrapper", False):
        raise PluginError(f"{hook_name} is a registration hook; it cannot be a wrapper")
    result = impl.function()
    if result is None:
        return []
    if isinstance(result, str | bytes | dict) or not isinstance(result, Iterable):
        raise TypeError(
            f"{hook_name} must return a list of records, got {type(result).__name__}"
        )
    records = list(result)
    _check_types(hook_name, records)
    return records


def build_registry(pm: pluggy.PluginManager, report: LoadReport | None = None) -> Registry:
    """Call every registration hook of every plugin and index the records.

    Plugins are processed in registration order (entry points sorted by name, then the
    ones passed by hand), so listings and the order of profile fragments are stable.
    A plugin whose hook raises or returns something other than its records is skipped
    as a whole (none of its records are used) and reported in ``Registry.broken``.
    """
    report = report or LoadReport()
    reg = Registry(broken=list(report.broken), blocked=list(report.blocked))
    dists = report.distributions
    infos: dict[str, PluginInfo] = {}
    for name, plugin in pm.list_name_plugin():
        if plugin is None:
            continue
        dist, version = dists.get(name, (None, None))
        infos[name] = PluginInfo(
            name=name,
            module=getattr(plugin, "__name__", type(plugin).__name__),
            distribution=dist,
            version=version,
        )
    collected: dict[str, list[tuple[str, list[Any]]]] = {name: [] for name in infos}
    failed: set[str] = set()
    for hook_name in [*_HOOKS, "vetting_profiles"]:
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            owner = impl.plugin_name
            if owner in failed or owner not in collected:
                continue
            try:
                records = _call_registration_hook(hook_name, impl)
            except Exception as exc:
                failed.add(owner)
                reg.broken.append(
                    BrokenPlugin(
                        name=owner,
                        stage=hook_name,
                        error=f"{type(exc).__name__}: {exc}",
                        traceback=traceback.format_exc(),
                    )
                )
                log.error("plugin.hook_failed", plugin=owner, hook=hook_name, error=str(exc))
                continue
            collected[owner].append((hook_name, records))
    for owner, per_hook in collected.items():
        if owner in failed:
            infos.pop(owner, None)
            continue
        for hook_name, records in per_hook:
            for record in records:
                _add(reg, infos[owner], hook_name, record, dists)
    reg.plugins = sorted(infos.values(), key=lambda i: i.name)
    return reg


def _check_types(hook_name: str, records: list[Any]) -> None:
    expected = ProfileSpec if hook_name == "vetting_profiles" else _HOOKS[hook_name][1]
    for record in records:
        if not isinstance(record, expected):
            raise TypeError(
                f"{hook_name} must return {expected.__name__} records, got {type(record).__name__}"
            )


def _add(
    reg: Registry,
    info: PluginInfo,
    hook_name: str,
    record: Any,
    dists: dict[str, tuple[str, str]] | None = None,
) -> None:
    if hook_name == "vetting_profiles":
        reg.profile_specs.append((info.name, record))
        label = record.name + (" (fragment)" if record.fragment else "")
        info.registers.setdefault("profiles", []).append(label)
        return
    attr, _type, key_attr = _HOOKS[hook_name]
    key = getattr(record, key_attr)
    table: dict[str, Any] = getattr(reg, attr)
    what = attr[:-1].replace("_", " ")
    if key in table:
        other = reg.owners[(attr, key)]
        if other == info.name:
            raise DuplicateNameError(f"plugin {info.name!r} registers {what} {key!r} twice")

        def label(name: str) -> str:
            d = (dists or {}).get(name)
            return f"plugin {name!r}" + (f" ({d[0]} {d[1]})" if d else "")

        raise DuplicateNameError(
            f"{what} {key!r} is registered by both {label(other)} and {label(info.name)}; "
            f"block one of them (VETTING_DISABLE_PLUGINS={info.name})"
        )
    table[key] = record
    reg.owners[(attr, key)] = info.name
    info.registers.setdefault(attr, []).append(key)


def load_registry(
    *,
    blocked: Iterable[str] = (),
    entry_points: bool = True,
    plugins: Sequence[tuple[str, Any]] = (),
    environ: dict[str, str] | None = None,
) -> Registry:
    """``create_plugin_manager`` + ``build_registry`` in one call."""
    pm, report = create_plugin_manager(
        blocked=blocked, entry_points=entry_points, plugins=plugins, environ=environ
    )
    return build_registry(pm, report)


def describe(reg: Registry) -> str:
    """Human-readable listing for ``vetting plugins list`` / ``vetting-agent plugins``."""
    lines: list[str] = []
    for info in reg.plugins:
        dist = f"{info.distribution} {info.version}" if info.distribution else "registered by hand"
        lines.append(f"{info.name}  ({dist}; {info.module})")
        for what, names in sorted(info.registers.items()):
            lines.append(f"    {what.replace('_', ' ')}: {', '.join(names)}")
        if not info.registers:
            lines.append("    (registers nothing)")
    for b in reg.broken:
        lines.append(f"{b.name}  BROKEN in {b.stage}: {b.error} (skipped)")
    for name in reg.blocked:
        lines.append(f"{name}  blocked")
    return "\n".join(lines)
