"""Host input rules: MAC normalisation, expected-spec validation, boot config checks.

Errors are :class:`FieldError` naming the field, turned into 422 responses.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from vetting_core.plugins import Registry
from vetting_core.specdiff import ExpectedSpec, SpecError, parse_spec, spec_to_dict

_MAC = re.compile(r"^[0-9a-f]{2}([:-]?)[0-9a-f]{2}(\1[0-9a-f]{2}){4}$", re.IGNORECASE)
_DOTTED = re.compile(r"^[0-9a-f]{4}\.[0-9a-f]{4}\.[0-9a-f]{4}$", re.IGNORECASE)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


class FieldError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def normalize_mac(mac: str, field: str = "mac") -> str:
    """``AA-BB-CC-DD-EE-FF``, ``aabbccddeeff``, ``aabb.ccdd.eeff`` → ``aa:bb:cc:dd:ee:ff``."""
    raw = (mac or "").strip()
    if not (_MAC.match(raw) or _DOTTED.match(raw)):
        raise FieldError(field, f"invalid MAC address {mac!r}: expected six hex pairs like aa:bb:cc:dd:ee:ff")
    digits = re.sub(r"[^0-9a-fA-F]", "", raw).lower()
    if int(digits[:2], 16) & 1:
        raise FieldError(field, f"{mac!r} is a multicast address, not a NIC's MAC")
    return ":".join(digits[i : i + 2] for i in range(0, 12, 2))


def validate_name(name: str, field: str = "name") -> str:
    name = (name or "").strip()
    if not _NAME.match(name):
        raise FieldError(field, f"invalid host name {name!r}: 1-63 letters, digits, '.', '_' or '-'")
    return name


def parse_host_spec(text: str, field: str = "expected_spec_yaml") -> ExpectedSpec | None:
    """``None`` for an empty spec (the host has no expectations yet)."""
    if not (text or "").strip():
        return None
    try:
        return parse_spec(text)
    except SpecError as exc:
        raise FieldError(field, str(exc)) from None


def spec_dict(text: str) -> dict[str, Any] | None:
    spec = parse_host_spec(text)
    return None if spec is None else spec_to_dict(spec)


def validate_boot(registry: Registry, provider: str, config: dict[str, Any]) -> None:
    spec = registry.boot_providers.get(provider)
    if spec is None:
        known = ", ".join(sorted(registry.boot_providers)) or "none installed"
        raise FieldError("boot_provider", f"unknown boot provider {provider!r} (installed: {known})")
    if spec.config_type is not None:
        try:
            msgspec.convert(config or {}, spec.config_type)
        except msgspec.ValidationError as exc:
            raise FieldError("boot_config", str(exc)) from None
