"""ntfy, Discord and the signed webhook, delivered to a real HTTP receiver on loopback."""

from __future__ import annotations

import json
import time

import msgspec
import pytest

from vetting_core.events import RunEventKind
from vetting_notifiers._http import DeliveryError
from vetting_notifiers.config import NotifierConfigError
from vetting_notifiers.discord import DiscordNotifier
from vetting_notifiers.ntfy import NtfyNotifier
from vetting_notifiers.webhook import (
    SignatureError,
    WebhookNotifier,
    sign,
    verify_signature,
)

from .conftest import make_event
from .receivers import WEBHOOK_SECRET

pytestmark = pytest.mark.anyio


async def test_ntfy_publishes_json_to_topic(http_receiver, event):
    n = NtfyNotifier({"url": f"{http_receiver.base}/ok/ntfy-a/alerts", "tags": ["dc1"], "token": "tk_abc"})
    await n.send(event)
    (req,) = http_receiver.wait_for("/ok/ntfy-a/", 1)
    assert req.path == "/ok/ntfy-a/"  # JSON publishing goes to the server root of the topic
    doc = json.loads(req.body)
    assert doc["topic"] == "alerts"
    assert doc["title"] == "Vetting: web-07 failed at SMART (run 42)"
    assert doc["priority"] == 5  # critical
    assert doc["tags"] == ["rotating_light", "dc1"]
    assert doc["click"] == "http://vetting.example/runs/42"
    assert "reallocated sectors grew by 12" in doc["message"]
    assert req.headers["authorization"] == "Bearer tk_abc"


async def test_ntfy_explicit_title_and_named_priority(http_receiver):
    n = NtfyNotifier({"url": f"{http_receiver.base}/ok/ntfy-b/t", "title": "Rack 4", "priority": "low"})
    await n.send(make_event(host_name="db-1\r\nInjected: yes"))
    (req,) = http_receiver.wait_for("/ok/ntfy-b/", 1)
    doc = json.loads(req.body)
    assert doc["title"] == "Rack 4" and doc["priority"] == 2
    assert "authorization" not in req.headers
    assert "\r" not in doc["message"] and "db-1 Injected: yes" in doc["message"]


async def test_ntfy_server_error_raises(http_receiver, event):
    n = NtfyNotifier({"url": f"{http_receiver.base}/fail/ntfy/t"})
    with pytest.raises(DeliveryError, match="HTTP 500"):
        await n.send(event)


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        ({}, "url"),
        ({"url": "https://ntfy.sh/x", "priority": 9}, "priority must be 1..5"),
        ({"url": "https://ntfy.sh/x", "priority": "loud"}, "$.priority"),
        ({"url": "https://ntfy.sh/x", "tags": "a"}, "$.tags"),
        ({"url": "https://ntfy.sh/x", "colour": "red"}, "colour"),
        ({"url": "ftp://ntfy.sh/x"}, "http(s)"),
        ({"url": "https://ntfy.sh/"}, "topic"),
    ],
)
def test_ntfy_bad_config_names_the_field(config, needle):
    with pytest.raises(NotifierConfigError) as exc:
        NtfyNotifier(config)
    assert needle in str(exc.value)


async def test_discord_embed(http_receiver):
    n = DiscordNotifier({"webhook_url": f"{http_receiver.base}/ok/discord/api/webhooks/1/tok"})
    await n.send(make_event(host_name="@everyone web-07"))
    (req,) = http_receiver.wait_for("/ok/discord/", 1)
    doc = json.loads(req.body)
    assert doc["allowed_mentions"] == {"parse": []}  # machine text can never ping
    (embed,) = doc["embeds"]
    fields = {f["name"]: f["value"] for f in embed["fields"]}
    assert fields["Host"] == "@everyone web-07"
    assert fields["Run"] == "42"
    assert fields["Stage"] == "SMART"
    assert fields["Verdict"] == "failed"
    assert fields["Link"] == embed["url"] == "http://vetting.example/runs/42"
    assert embed["color"] == 0xD83C3E
    assert embed["timestamp"].startswith("2026-11-23T01:02:03")


async def test_discord_error_hides_webhook_token(http_receiver, event):
    n = DiscordNotifier({"webhook_url": f"{http_receiver.base}/fail/api/webhooks/123/SECRETTOKEN"})
    with pytest.raises(DeliveryError) as exc:
        await n.send(event)
    assert "SECRETTOKEN" not in str(exc.value) and "HTTP 500" in str(exc.value)


def test_discord_config_names_missing_and_unknown_fields():
    with pytest.raises(NotifierConfigError, match="missing required field `webhook_url`"):
        DiscordNotifier({})
    with pytest.raises(NotifierConfigError, match="unknown field `url`"):
        DiscordNotifier({"url": "https://discord.com/api/webhooks/1/x"})


async def test_webhook_signed_and_verified_by_receiver(http_receiver, event):
    n = WebhookNotifier(
        {"url": f"{http_receiver.base}/hook/a", "secret": WEBHOOK_SECRET, "headers": {"X-Api-Key": "k"}}
    )
    await n.send(event)
    (req,) = http_receiver.wait_for("/hook/a", 1)
    assert req.verified is True, req.verify_error
    assert req.headers["x-vetting-event"] == "StageFailed"
    assert req.headers["x-api-key"] == "k"
    assert req.headers["x-vetting-signature"].startswith("sha256=")
    doc = msgspec.json.decode(req.body)
    assert doc["version"] == 1
    assert doc["event"]["run_id"] == 42 and doc["event"]["host_name"] == "web-07"


async def test_webhook_wrong_secret_is_rejected_by_receiver(http_receiver, event):
    n = WebhookNotifier({"url": f"{http_receiver.base}/hook/b", "secret": "not-the-shared-secret!"})
    with pytest.raises(DeliveryError, match="HTTP 401"):
        await n.send(event)
    (req,) = http_receiver.wait_for("/hook/b", 1)
    assert req.verified is False and "does not match" in req.verify_error


def test_webhook_delivery_id_is_stable_across_retries(event):
    n = WebhookNotifier({"url": "https://example.com/h", "secret": WEBHOOK_SECRET})
    body1, h1 = n.request(event, now=1_000_000)
    body2, h2 = n.request(event, now=1_000_030)
    assert body1 == body2 and h1["X-Vetting-Delivery"] == h2["X-Vetting-Delivery"]
    assert h1["X-Vetting-Signature"] != h2["X-Vetting-Signature"]  # the timestamp is signed


def test_verify_signature_rejects_tampering_replay_and_garbage(event):
    n = WebhookNotifier({"url": "https://example.com/h", "secret": WEBHOOK_SECRET})
    now = time.time()
    body, h = n.request(event, now=now)
    ts, sig = h["X-Vetting-Timestamp"], h["X-Vetting-Signature"]
    verify_signature(WEBHOOK_SECRET, body, ts, sig, now=now)  # authentic
    with pytest.raises(SignatureError, match="does not match"):
        verify_signature(WEBHOOK_SECRET, body.replace(b"web-07", b"web-08"), ts, sig, now=now)
    with pytest.raises(SignatureError, match="away from now"):  # replayed an hour later
        verify_signature(WEBHOOK_SECRET, body, ts, sig, now=now + 3600)
    with pytest.raises(SignatureError, match="does not match"):  # fresh timestamp, old signature
        verify_signature(WEBHOOK_SECRET, body, str(int(now) + 10), sig, now=now)
    with pytest.raises(SignatureError, match="missing"):
        verify_signature(WEBHOOK_SECRET, body, None, sig, now=now)
    with pytest.raises(SignatureError, match="not an integer"):
        verify_signature(WEBHOOK_SECRET, body, "soon", sig, now=now)
    # the documented algorithm, recomputed independently of sign()
    import hashlib
    import hmac as _hmac

    mac = _hmac.new(WEBHOOK_SECRET.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    assert sig == f"sha256={mac}" == sign(WEBHOOK_SECRET, ts, body)


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        ({"url": "https://x.example/h"}, "secret"),
        ({"url": "https://x.example/h", "secret": "short"}, "at least 16"),
        (
            {"url": "https://x.example/h", "secret": WEBHOOK_SECRET, "headers": {"X-Vetting-Signature": "x"}},
            "set by the notifier",
        ),
        (
            {"url": "https://x.example/h", "secret": WEBHOOK_SECRET, "headers": {"A": "b\r\nC: d"}},
            "line break",
        ),
        ({"url": "https://x.example/h", "secret": WEBHOOK_SECRET, "headers": {"A": 1}}, "$.headers"),
    ],
)
def test_webhook_bad_config(config, needle):
    with pytest.raises(NotifierConfigError) as exc:
        WebhookNotifier(config)
    assert needle in str(exc.value)


async def test_minimal_event_without_stage_or_link(http_receiver):
    ev = make_event(RunEventKind.RunCompleted, stage=None, url=None, message="", host_name="", state=None)
    await NtfyNotifier({"url": f"{http_receiver.base}/ok/min-ntfy/t"}).send(ev)
    await DiscordNotifier({"webhook_url": f"{http_receiver.base}/ok/min-discord"}).send(ev)
    await WebhookNotifier({"url": f"{http_receiver.base}/hook/min", "secret": WEBHOOK_SECRET}).send(ev)
    (ntfy,) = http_receiver.wait_for("/ok/min-ntfy/", 1)
    doc = json.loads(ntfy.body)
    assert doc["title"] == "Vetting: host #7 passed (run 42)" and doc["priority"] == 3 and "click" not in doc
    assert doc["tags"] == ["white_check_mark"]
    (discord,) = http_receiver.wait_for("/ok/min-discord", 1)
    embed = json.loads(discord.body)["embeds"][0]
    assert "url" not in embed and {f["name"]: f["value"] for f in embed["fields"]}["Stage"] == "—"
    assert embed["color"] == 0x2EA043
    assert http_receiver.wait_for("/hook/min", 1)[0].verified is True
