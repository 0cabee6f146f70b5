"""Discord notifier: post a run event to a channel webhook as one embed.

The embed carries host, run, stage and verdict as fields and links to the run.
``allowed_mentions`` is empty so that text from the machine (a hostile host name such
as ``@everyone``) can never ping a channel. Config (``kind: discord``)::

    webhook_url: https://discord.com/api/webhooks/<id>/<token>
    username: Vetting      # optional display name
    avatar_url: null
"""

from __future__ import annotations

from urllib.parse import urlsplit

import msgspec

from vetting_core import NotifierSpec, hookimpl
from vetting_core.events import RunEvent

from . import message
from ._http import post
from .config import NotifierConfigError, convert_config

# Discord embed colours (decimal RGB): red, amber, green
SEVERITY_COLOUR = {"critical": 0xD83C3E, "warning": 0xE8A33D, "info": 0x2EA043}


class DiscordConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    webhook_url: str
    username: str = "Vetting"
    avatar_url: str | None = None


def _field(name: str, value: str) -> dict:
    return {"name": name, "value": message.clean(value, 1024) or "—", "inline": True}


class DiscordNotifier:
    def __init__(self, config: DiscordConfig | dict) -> None:
        self.config = convert_config(config, DiscordConfig)
        parts = urlsplit(self.config.webhook_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise NotifierConfigError(
                f"discord: webhook_url must be an http(s) URL, got {self.config.webhook_url!r}"
            )

    def payload(self, event: RunEvent) -> dict:
        sev = message.severity_of(event)
        embed = {
            "title": message.title(event)[:256],
            "description": message.clean(event.message, 4000) if event.message else message.verdict(event),
            "color": SEVERITY_COLOUR.get(sev, 0x808080),
            "timestamp": event.ts.isoformat(),
            "fields": [
                _field("Host", message.host_label(event)),
                _field(*message.reference_field(event)),
                _field("Stage", event.stage or "—"),
                _field("Verdict", message.verdict(event)),
                _field("Severity", sev),
            ],
            "footer": {"text": f"Vetting · {message.kind_of(event)}"},
        }
        if event.url:
            embed["url"] = event.url
            embed["fields"].append({"name": "Link", "value": event.url[:1024], "inline": False})
        doc = {
            "username": message.clean(self.config.username, 80),
            "embeds": [embed],
            "allowed_mentions": {"parse": []},
        }
        if self.config.avatar_url:
            doc["avatar_url"] = self.config.avatar_url
        return doc

    async def send(self, event: RunEvent) -> None:
        await post(
            self.config.webhook_url,
            content=msgspec.json.encode(self.payload(event)),
            headers={"Content-Type": "application/json"},
        )


@hookimpl
def vetting_notifiers():
    return [
        NotifierSpec(
            kind="discord",
            factory=DiscordNotifier,
            config_type=DiscordConfig,
            description="post an embed (host, run, stage, verdict, link) to a Discord webhook",
        )
    ]
