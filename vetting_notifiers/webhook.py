"""Signed webhook notifier: POST the run event as JSON, signed with HMAC-SHA256.

Wire format (documented for receivers in ``docs/notifications.md``)::

    POST <url>
    Content-Type: application/json
    X-Vetting-Event: StageFailed
    X-Vetting-Delivery: <hex id, the same for every retry of one event>
    X-Vetting-Timestamp: <unix seconds when this attempt was signed>
    X-Vetting-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>." + raw body)>

    {"version": 1, "event": {...RunEvent...}}

The timestamp is part of the signed text, so a captured request cannot be replayed
later with a fresh timestamp; receivers reject timestamps outside a tolerance
(:func:`verify_signature`, default 5 minutes) and may drop repeated delivery ids.
Config (``kind: webhook``)::

    url: https://cmdb.example.com/hooks/vetting
    secret: "…"              # shared secret, at least 16 characters
    headers: {}              # extra headers (e.g. an API key)
    verify_tls: true
"""

from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import urlsplit

import msgspec

from vetting_core import NotifierSpec, hookimpl
from vetting_core.events import RunEvent

from ._http import post
from .config import NotifierConfigError, convert_config

SIGNATURE_HEADER = "X-Vetting-Signature"
TIMESTAMP_HEADER = "X-Vetting-Timestamp"
EVENT_HEADER = "X-Vetting-Event"
DELIVERY_HEADER = "X-Vetting-Delivery"
BODY_VERSION = 1
_RESERVED = {
    h.lower() for h in (SIGNATURE_HEADER, TIMESTAMP_HEADER, EVENT_HEADER, DELIVERY_HEADER, "content-type")
}


class WebhookConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    url: str
    secret: str
    headers: dict[str, str] = {}
    verify_tls: bool = True


class SignatureError(ValueError):
    """A webhook request failed verification (the message says why)."""


def sign(secret: str | bytes, timestamp: int | str, body: bytes) -> str:
    """``sha256=<hex>`` over ``b"<timestamp>." + body`` with key ``secret``."""
    key = secret.encode() if isinstance(secret, str) else secret
    mac = hmac.new(key, str(timestamp).encode("ascii") + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify_signature(
    secret: str | bytes,
    body: bytes,
    timestamp: str | None,
    signature: str | None,
    *,
    tolerance_s: float = 300.0,
    now: float | None = None,
) -> None:
    """Check a received webhook; raise :class:`SignatureError` unless it is authentic
    and fresh. ``body`` must be the raw request bytes (not re-serialised JSON)."""
    if not timestamp or not signature:
        raise SignatureError("missing signature or timestamp header")
    try:
        ts = int(timestamp)
    except ValueError:
        raise SignatureError("timestamp is not an integer") from None
    now = time.time() if now is None else now
    if abs(now - ts) > tolerance_s:
        raise SignatureError(f"timestamp is {now - ts:+.0f} s away from now (tolerance {tolerance_s:.0f} s)")
    expected = sign(secret, ts, body)
    if not hmac.compare_digest(expected.encode(), signature.strip().encode()):
        raise SignatureError("signature does not match")


def encode_body(event: RunEvent) -> bytes:
    return msgspec.json.encode({"version": BODY_VERSION, "event": event})


class WebhookNotifier:
    def __init__(self, config: WebhookConfig | dict) -> None:
        self.config = c = convert_config(config, WebhookConfig)
        parts = urlsplit(c.url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise NotifierConfigError(f"webhook: url must be an http(s) URL, got {c.url!r}")
        if len(c.secret) < 16:
            raise NotifierConfigError("webhook: secret must be at least 16 characters")
        clash = sorted(h for h in c.headers if h.lower() in _RESERVED)
        if clash:
            raise NotifierConfigError(f"webhook: headers: {clash} are set by the notifier itself")
        for name, value in c.headers.items():
            if any(ch in name + value for ch in "\r\n"):
                raise NotifierConfigError(f"webhook: headers: {name!r} contains a line break")

    def request(self, event: RunEvent, *, now: float | None = None) -> tuple[bytes, dict[str, str]]:
        """The body and headers of one attempt (signed at ``now``)."""
        body = encode_body(event)
        ts = int(time.time() if now is None else now)
        headers = {
            **self.config.headers,
            "Content-Type": "application/json",
            EVENT_HEADER: getattr(event.kind, "value", str(event.kind)),
            DELIVERY_HEADER: hashlib.sha256(body).hexdigest()[:32],
            TIMESTAMP_HEADER: str(ts),
            SIGNATURE_HEADER: sign(self.config.secret, ts, body),
        }
        return body, headers

    async def send(self, event: RunEvent) -> None:
        body, headers = self.request(event)
        await post(self.config.url, content=body, headers=headers, verify=self.config.verify_tls)


@hookimpl
def vetting_notifiers():
    return [
        NotifierSpec(
            kind="webhook",
            factory=WebhookNotifier,
            config_type=WebhookConfig,
            description="POST the event as JSON signed with HMAC-SHA256 (X-Vetting-Signature)",
        )
    ]
