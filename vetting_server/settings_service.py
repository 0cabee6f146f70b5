"""Runtime settings: the configuration keys the web UI may change without a restart.

The YAML file (with its ``VETTING__`` variables) stays the boot-time source of every
setting, and its ``ui.overridable`` names which of :data:`vetting_core.config.RUNTIME_KEYS`
the UI may override. An override is one row of the ``settings`` table (seed 000: key =
the dotted key, value = JSON) and is validated exactly like the file: the file's
settings with every override merged in go through :func:`settings_from_dict`, the same
function that checks the file at start-up (plus what only a running server can check:
the default profile is installed). The result replaces ``rt.settings``; every user of a
runtime key reads it where it uses it (the janitor per sweep, the dispatcher per boot
window, the notification dispatcher per event, a new run), so a change takes effect at
once. Each server process re-reads the table every :data:`REFRESH_S` seconds, so replicas
on one PostgreSQL database follow within that time.

An override the file no longer allows, or that stopped validating (a route naming a
target since removed from the file), is not applied: the file's value stays in force
and the settings page says why.
"""

from __future__ import annotations

from typing import Any

import anyio
import msgspec
import structlog

from vetting_core.config import RUNTIME_KEYS, ConfigError, Settings, settings_from_dict
from vetting_core.safeyaml import YamlError, load_yaml

from .db import orm
from .db.tables import Settings as SettingsTable
from .runtime import Runtime

log = structlog.get_logger()

REFRESH_S = 5.0
SOURCE = "runtime settings"


class SettingError(ValueError):
    """A value the UI cannot store; ``key`` is the field the message belongs to."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def profile_names(registry: Any) -> list[str]:
    """The profiles a run may name (fragments only add to one)."""
    return sorted({spec.name for _, spec in registry.profile_specs if not spec.fragment})


def get_path(data: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        data = data[part]
    return data


def _set_path(data: dict[str, Any], key: str, value: Any) -> None:
    *parents, last = key.split(".")
    for part in parents:
        data = data[part]
    data[last] = value


class RuntimeSettings:
    """Owns ``rt.settings`` once the server runs: the file's settings plus the overrides."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.base: Settings = rt.settings  # what the file (and the environment) said
        self.overrides: dict[str, Any] = {}  # in force
        self.rejected: dict[str, str] = {}  # stored but not in force: key -> why
        self._stored: dict[str, str] | None = None

    @property
    def allowed(self) -> list[str]:
        return list(self.base.ui.overridable)

    def value(self, key: str, settings: Settings | None = None) -> Any:
        """The value in force (``settings``: of another Settings) as plain data."""
        return get_path(msgspec.to_builtins(settings or self.rt.settings), key)

    def file_value(self, key: str) -> Any:
        return self.value(key, self.base)

    def build(self, overrides: dict[str, Any]) -> Settings:
        """The file's settings with ``overrides`` merged in, validated like the file."""
        data = msgspec.to_builtins(self.base)
        for key, value in overrides.items():
            _set_path(data, key, value)
        settings = settings_from_dict(data, source=SOURCE)
        profile = settings.runs.default_profile
        if "runs.default_profile" in overrides and profile not in profile_names(self.rt.registry):
            known = ", ".join(profile_names(self.rt.registry)) or "none"
            raise ConfigError(f"{SOURCE}: $.runs.default_profile: no installed profile {profile!r} (installed: {known})")
        return settings

    def apply(self, settings: Settings) -> None:
        self.rt.settings = settings
        if self.rt.notifier is not None:  # routes are read per event; the targets stay the file's
            self.rt.notifier.settings = settings.notifications

    # ------------------------------------------------------------------ load
    async def load(self) -> None:
        """Read the stored overrides and put in force those that are allowed and valid."""
        rows = await orm.rows(self.rt.db, SettingsTable.select(SettingsTable.key, SettingsTable.value))
        stored = {r["key"]: r["value"] for r in rows if r["key"] in RUNTIME_KEYS}
        if stored == self._stored:
            return
        self._stored = stored
        overrides: dict[str, Any] = {}
        rejected: dict[str, str] = {}
        for key, text in stored.items():
            if key not in self.allowed:
                rejected[key] = "the configuration file does not list it in ui.overridable: the file's value is in force"
                continue
            try:
                value = msgspec.json.decode(text)
                self.build({**overrides, key: value})
            except (ConfigError, msgspec.DecodeError) as exc:
                rejected[key] = f"not valid with the configuration file any more: {exc}"
                continue
            overrides[key] = value
        self.overrides, self.rejected = overrides, rejected
        self.apply(self.build(overrides))
        if rejected:
            log.warning("settings.rejected", keys=sorted(rejected))

    async def run(self) -> None:
        """Follow changes made through other server processes."""
        while True:
            await anyio.sleep(REFRESH_S)
            try:
                await self.load()
            except Exception as exc:
                log.error("settings.refresh_failed", error=f"{type(exc).__name__}: {exc}")

    # ------------------------------------------------------------------ change
    def parse(self, key: str, text: str) -> Any:
        """A value typed as YAML (a number, a word, a list of routes) → plain data."""
        if key not in RUNTIME_KEYS:
            raise SettingError(key, f"{key}: not a runtime setting")
        if key not in self.allowed:
            raise SettingError(key, f"{key}: the configuration file does not allow changing it here (ui.overridable)")
        try:
            return load_yaml(text, what=key, max_bytes=256 * 1024)
        except YamlError as exc:
            raise SettingError(key, str(exc)) from None

    async def change(self, key: str, value: Any, *, actor: str) -> None:
        """Validate, store, audit and apply one override."""
        try:
            settings = self.build({**self.overrides, key: value})
        except ConfigError as exc:
            raise SettingError(key, str(exc).removeprefix(f"{SOURCE}: ")) from None
        old = self.value(key)
        text = msgspec.json.encode(value).decode()
        async with self.rt.unit() as u:
            await orm.upsert(u.tx, SettingsTable, SettingsTable.key, key=key, value=text)
            await u.event("audit.setting_changed", f"setting {key} changed by {actor}", actor=actor,
                          data={"key": key, "old": old, "new": value})
        self.overrides = {**self.overrides, key: value}
        self.rejected.pop(key, None)
        self._stored = None
        self.apply(settings)

    async def reset(self, key: str, *, actor: str) -> None:
        """Drop the override: the file's value is in force again."""
        overrides = {k: v for k, v in self.overrides.items() if k != key}
        settings = self.build(overrides)
        old = self.value(key)
        async with self.rt.unit() as u:
            await orm.run(u.tx, SettingsTable.delete().where(SettingsTable.key == key))
            await u.event("audit.setting_reset", f"setting {key} reset to the configuration file's value by {actor}",
                          actor=actor, data={"key": key, "old": old, "new": self.file_value(key)})
        self.overrides = overrides
        self.rejected.pop(key, None)
        self._stored = None
        self.apply(settings)
