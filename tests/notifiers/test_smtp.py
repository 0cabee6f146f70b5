"""SMTP notifier against a real aiosmtpd server: plain relay, STARTTLS and implicit TLS,
with AUTH, using a self-signed certificate made with the openssl CLI for each session."""

from __future__ import annotations

import pytest

from vetting_notifiers._http import DeliveryError
from vetting_notifiers.config import NotifierConfigError
from vetting_notifiers.smtp import SmtpNotifier

from .conftest import make_event
from .receivers import smtp_server

pytestmark = pytest.mark.anyio

USERS = {"vetting": "pa55word"}


def config(controller, **kw):
    base = {
        "host": "127.0.0.1",
        "port": controller.port,
        "from_addr": "vetting@example.com",
        "to": ["oncall@example.com", "hw@example.com"],
    }
    base.update(kw)
    return base


def check_message(sink):
    (msg,) = sink.messages
    assert msg["Subject"] == "[vetting] Vetting: web-07 failed at SMART (run 42)"
    assert msg["To"] == "oncall@example.com, hw@example.com"
    assert msg["X-Vetting-Event"] == "StageFailed"
    assert msg.get_content_type() == "multipart/alternative"
    plain = msg.get_body(("plain",)).get_content()
    html = msg.get_body(("html",)).get_content()
    assert "reallocated sectors grew by 12" in plain and "Run:      42" in plain
    assert 'href="http://vetting.example/runs/42"' in html
    assert sorted(sink.envelopes[0].rcpt_tos) == ["hw@example.com", "oncall@example.com"]
    return plain, html


async def test_plain_relay(event):
    with smtp_server(mode="plain") as (controller, sink):
        await SmtpNotifier(config(controller, security="none")).send(event)
    check_message(sink)


async def test_starttls_with_auth_verifies_certificate(event, tls_cert):
    with smtp_server(mode="starttls", cert=tls_cert, users=USERS) as (controller, sink):
        n = SmtpNotifier(
            config(
                controller,
                security="starttls",
                username="vetting",
                password="pa55word",
                ca_file=str(tls_cert[0]),
            )
        )
        await n.send(event)
    check_message(sink)
    assert sink.logins == ["vetting"]


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")
async def test_implicit_tls_with_auth(event, tls_cert):
    with smtp_server(mode="tls", cert=tls_cert, users=USERS) as (controller, sink):
        n = SmtpNotifier(
            config(
                controller, security="tls", username="vetting", password="pa55word", ca_file=str(tls_cert[0])
            )
        )
        await n.send(event)
    check_message(sink)
    assert sink.logins == ["vetting"]


async def test_untrusted_certificate_is_refused(event, tls_cert):
    with smtp_server(mode="tls", cert=tls_cert) as (controller, sink):
        with pytest.raises(DeliveryError, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
            await SmtpNotifier(config(controller, security="tls", timeout_s=5)).send(event)
    assert sink.messages == []


async def test_wrong_password_fails(event, tls_cert):
    with smtp_server(mode="starttls", cert=tls_cert, users=USERS) as (controller, sink):
        n = SmtpNotifier(config(controller, username="vetting", password="wrong", ca_file=str(tls_cert[0])))
        with pytest.raises(DeliveryError, match="SMTPAuthenticationError"):
            await n.send(event)
    assert sink.messages == []


async def test_starttls_required_but_not_offered_never_sends_in_clear(event):
    with smtp_server(mode="plain") as (controller, sink):
        with pytest.raises(DeliveryError, match="does not offer STARTTLS"):
            await SmtpNotifier(config(controller, security="starttls")).send(event)
    assert sink.messages == []


async def test_hostile_text_is_escaped_and_headers_stay_single_line(tls_cert):
    ev = make_event(host_name="<script>alert(1)</script>\r\nBcc: victim@example.com", message="<b>x</b> & y")
    with smtp_server(mode="plain") as (controller, sink):
        await SmtpNotifier(config(controller, security="none")).send(ev)
    (msg,) = sink.messages
    assert msg["Bcc"] is None
    html = msg.get_body(("html",)).get_content()
    assert "<script>" not in html and "&lt;script&gt;" in html and "&lt;b&gt;x&lt;/b&gt; &amp; y" in html
    assert sorted(sink.envelopes[0].rcpt_tos) == ["hw@example.com", "oncall@example.com"]


@pytest.mark.parametrize(
    ("cfg", "needle"),
    [
        ({"host": "h", "from_addr": "a@b"}, "`to`"),
        ({"host": "h", "from_addr": "a@b", "to": []}, "at least one recipient"),
        ({"host": "h", "from_addr": "a@b", "to": ["x@y\r\nBcc: z@w"]}, "not a plain mail address"),
        ({"host": "h", "from_addr": "a@b", "to": ["x@y"], "security": "ssl"}, "$.security"),
        ({"host": "h", "from_addr": "a@b", "to": ["x@y"], "username": "u"}, "go together"),
        ({"host": "h", "from_addr": "a@b", "to": ["x@y"], "port": "25"}, "$.port"),
    ],
)
def test_bad_config(cfg, needle):
    with pytest.raises(NotifierConfigError) as exc:
        SmtpNotifier(cfg)
    assert needle in str(exc.value)
