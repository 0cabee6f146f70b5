"""Installing the operator's SSH key when a run is held (state FailedHolding).

The orchestrator answers ``POST /hold`` with a per-run public key and its expiry; the
agent appends it to root's ``authorized_keys`` with OpenSSH's ``expiry-time`` option
(OpenSSH ≥ 8.2), so the access ends by itself even if nobody releases the host. A key
already present (a re-issued hold) replaces its old line rather than piling up.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

DEFAULT_AUTHORIZED_KEYS = "/root/.ssh/authorized_keys"
MARKER = "vetting-hold"


class HoldKeyError(ValueError):
    pass


def _key_body(key: str) -> str:
    """``type base64`` of an OpenSSH public key (no options, no comment)."""
    parts = key.strip().split()
    for i, part in enumerate(parts):
        if part.startswith(("ssh-", "ecdsa-", "sk-")) and i + 1 < len(parts):
            return f"{part} {parts[i + 1]}"
    raise HoldKeyError(f"not an OpenSSH public key: {key[:40]!r}")


def authorized_keys_line(key: str, expires_at: datetime, run_id: int | None = None) -> str:
    if "\n" in key.strip() or "\r" in key:
        raise HoldKeyError("the hold key must be a single line")
    body = _key_body(key)
    expiry = expires_at.astimezone(UTC).strftime("%Y%m%d%H%M")
    comment = f"{MARKER}" + (f"-run-{run_id}" if run_id is not None else "")
    # expiry-time is read in the system time zone by sshd; the live image runs in UTC
    return f'expiry-time="{expiry}",no-agent-forwarding,no-X11-forwarding {body} {comment}'


def install_key(path: str | Path, key: str, expires_at: datetime, run_id: int | None = None) -> str:
    """Add (or replace) the hold key in ``path``; returns the line written."""
    path = Path(path)
    line = authorized_keys_line(key, expires_at, run_id)
    body = _key_body(key)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        existing = path.read_text().splitlines()
    except FileNotFoundError:
        existing = []
    kept = [ln for ln in existing if body not in ln]
    kept.append(line)
    tmp = path.with_name(path.name + ".vetting-tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("\n".join(kept) + "\n")
    os.replace(tmp, path)
    return line
