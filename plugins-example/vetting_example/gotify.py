"""The ``gotify`` notifier kind: run events pushed to a Gotify server.

Gotify (https://gotify.net) takes ``POST /message`` with the application token in the
``X-Gotify-Key`` header and a JSON body ``{title, message, priority, extras}``. A
target in the Vetting configuration::

    notifications:
      targets:
        - name: lab-phone
          kind: gotify
          config: {url: "https://gotify.example.net", token: "AbCdEf"}
      routes:
        - {targets: [lab-phone], severities: [critical]}

``send`` raises :class:`GotifyError` on any answer but 2xx so that the notification
dispatcher records the attempt as failed and retries it.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import httpx
import msgspec

DEFAULT_PRIORITIES = {"critical": 8, "warning": 5, "info": 2}


class GotifyError(RuntimeError):
    pass


class GotifyConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    url: str
    token: str
    priorities: dict[str, int] = msgspec.field(default_factory=lambda: dict(DEFAULT_PRIORITIES))
    timeout_s: float = 10.0


def _config(config: Any) -> GotifyConfig:
    if isinstance(config, GotifyConfig):
        cfg = config
    else:
        try:
            cfg = msgspec.convert(config, GotifyConfig)
        except msgspec.ValidationError as exc:
            raise ValueError(f"gotify config: {exc}") from None
    parts = urlsplit(cfg.url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"gotify config: url must be http(s)://host[:port][/path], got {cfg.url!r}")
    if not cfg.token.strip():
        raise ValueError("gotify config: token is empty")
    if cfg.timeout_s <= 0:
        raise ValueError(f"gotify config: timeout_s must be positive, got {cfg.timeout_s}")
    return cfg


def _get(event: Any, name: str, default: Any = None) -> Any:
    value = getattr(event, name, default)
    return getattr(value, "value", value)  # enums → their string


def build_message(event: Any, priorities: dict[str, int] | None = None) -> dict[str, Any]:
    """The JSON body for one run event (pure; a ``RunEvent``)."""
    priorities = priorities or DEFAULT_PRIORITIES
    kind = _get(event, "kind", "event")
    host_id = _get(event, "host_id")
    host = _get(event, "host_name", "") or (f"host #{host_id}" if host_id is not None else "unknown host")
    stage = _get(event, "stage")
    title = f"[Vetting] {kind}: {host}" + (f" / {stage}" if stage else "")
    lines = [_get(event, "message", "") or kind, f"run #{_get(event, 'run_id')}"]
    url = _get(event, "url")
    if url:
        lines.append(url)
    body: dict[str, Any] = {
        "title": title,
        "message": "\n".join(lines),
        "priority": priorities.get(str(_get(event, "severity", "info")), 5),
        "extras": {"client::display": {"contentType": "text/plain"}},
    }
    if url:
        body["extras"]["client::notification"] = {"click": {"url": url}}
    return body


class GotifyNotifier:
    def __init__(self, config: Any) -> None:
        self.config = _config(config)
        self.endpoint = self.config.url.rstrip("/") + "/message"

    async def send(self, event: Any) -> None:
        body = build_message(event, self.config.priorities)
        try:
            async with httpx.AsyncClient(timeout=self.config.timeout_s) as client:
                response = await client.post(
                    self.endpoint, json=body, headers={"X-Gotify-Key": self.config.token}
                )
        except httpx.HTTPError as exc:
            raise GotifyError(f"gotify at {self.endpoint}: {type(exc).__name__}: {exc}") from exc
        if not 200 <= response.status_code < 300:
            raise GotifyError(
                f"gotify at {self.endpoint} answered {response.status_code}: {response.text[:200]}"
            )
