"""ntfy notifier: push a run event to an ntfy topic.

Uses ntfy's JSON publishing (``POST`` to the server root with ``topic`` in the body)
rather than the header form, because titles carry host names and HTTP headers cannot
carry arbitrary Unicode. Config (``kind: ntfy``)::

    url: https://ntfy.sh/vetting-alerts   # the topic URL
    title: null          # default: "Vetting: web-07 failed at SMART (run 42)"
    priority: null       # 1..5 or min/low/default/high/max/urgent; default from severity
    tags: [datacenter]   # added after the severity emoji tag
    token: null          # access token → "Authorization: Bearer …"
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit, urlunsplit

import msgspec

from vetting_core import NotifierSpec, hookimpl
from vetting_core.events import RunEvent

from . import message
from ._http import post
from .config import NotifierConfigError, convert_config

PRIORITY_NAMES = {"min": 1, "low": 2, "default": 3, "high": 4, "max": 5, "urgent": 5}
SEVERITY_PRIORITY = {"critical": 5, "warning": 4, "info": 3}
SEVERITY_TAG = {"critical": "rotating_light", "warning": "warning", "info": "white_check_mark"}


class NtfyConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    url: str
    title: str | None = None
    priority: int | Literal["min", "low", "default", "high", "max", "urgent"] | None = None
    tags: list[str] = []
    token: str | None = None
    verify_tls: bool = True


class NtfyNotifier:
    def __init__(self, config: NtfyConfig | dict) -> None:
        self.config = convert_config(config, NtfyConfig)
        parts = urlsplit(self.config.url)
        path = parts.path.rstrip("/")
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise NotifierConfigError(f"ntfy: url must be an http(s) topic URL, got {self.config.url!r}")
        base, _, topic = path.rpartition("/")
        if not topic:
            raise NotifierConfigError(
                f"ntfy: url must name a topic (https://ntfy.sh/<topic>), got {self.config.url!r}"
            )
        self.topic = topic
        self.publish_url = urlunsplit((parts.scheme, parts.netloc, base + "/", "", ""))
        p = self.config.priority
        if isinstance(p, str):
            p = PRIORITY_NAMES[p]
        if p is not None and not 1 <= p <= 5:
            raise NotifierConfigError(f"ntfy: priority must be 1..5, got {p}")
        self.priority = p

    def payload(self, event: RunEvent) -> dict:
        sev = message.severity_of(event)
        tags = [SEVERITY_TAG.get(sev, "bell"), *self.config.tags]
        doc = {
            "topic": self.topic,
            "title": message.clean(self.config.title, 200) if self.config.title else message.title(event),
            "message": message.body(event),
            "priority": self.priority or SEVERITY_PRIORITY.get(sev, 3),
            "tags": tags,
        }
        if event.url:
            doc["click"] = event.url
        return doc

    async def send(self, event: RunEvent) -> None:
        headers = {"Content-Type": "application/json"}
        if self.config.token:
            headers["Authorization"] = f"Bearer {self.config.token}"
        await post(
            self.publish_url,
            content=msgspec.json.encode(self.payload(event)),
            headers=headers,
            verify=self.config.verify_tls,
        )


@hookimpl
def vetting_notifiers():
    return [
        NotifierSpec(
            kind="ntfy",
            factory=NtfyNotifier,
            config_type=NtfyConfig,
            description="push to an ntfy topic (title, priority, tags, optional token)",
        )
    ]
