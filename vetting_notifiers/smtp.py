"""SMTP notifier: a plain-text + HTML mail per run event.

Delivery uses the standard library's ``smtplib`` in a worker thread
(``anyio.to_thread.run_sync``) rather than ``aiosmtplib``: it needs no extra
dependency, a notification is one short conversation, and the thread is abandoned
(not waited for) when the dispatcher's timeout cancels the attempt; ``timeout_s`` is
also passed to the socket so the thread itself ends soon after.

``security``: ``starttls`` (default, port 587) upgrades the connection and refuses to
continue in clear text if the server does not offer STARTTLS; ``tls`` is implicit TLS
(port 465); ``none`` (port 25) is for a relay on the same trusted network only.
Config (``kind: smtp``)::

    host: mail.example.com
    port: null            # default from security: 587 / 465 / 25
    security: starttls
    username: null        # AUTH only when set
    password: null
    from_addr: vetting@example.com
    to: [oncall@example.com]
    subject_prefix: "[vetting]"
    verify_tls: true
    ca_file: null         # PEM bundle for a private CA
"""

from __future__ import annotations

import html
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Literal

import anyio
import msgspec
import structlog

from vetting_core import NotifierSpec, hookimpl
from vetting_core.events import RunEvent

from . import message
from ._http import DeliveryError
from .config import NotifierConfigError, convert_config

log = structlog.get_logger()

DEFAULT_PORTS = {"starttls": 587, "tls": 465, "none": 25}


class SmtpConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    host: str
    from_addr: str
    to: list[str]
    port: int | None = None
    security: Literal["starttls", "tls", "none"] = "starttls"
    username: str | None = None
    password: str | None = None
    subject_prefix: str = "[vetting]"
    timeout_s: float = 30.0
    verify_tls: bool = True
    ca_file: str | None = None


def _check_address(field: str, addr: str) -> None:
    if "@" not in addr or any(c in addr for c in "\r\n<>,") or addr != addr.strip():
        raise NotifierConfigError(f"smtp: {field}: not a plain mail address: {addr!r}")


def html_body(event: RunEvent) -> str:
    """A small, escaped HTML rendering of :func:`message.body` for mail clients."""
    e = html.escape
    sev = message.severity_of(event)
    colour = {"critical": "#b42318", "warning": "#b54708", "info": "#067647"}.get(sev, "#333")
    rows = [
        ("Host", message.host_label(event)),
        message.reference_field(event),
        ("Stage", message.clean(event.stage or "—", 80)),
        ("Verdict", message.verdict(event)),
        ("Event", f"{message.kind_of(event)} ({sev})"),
        ("When", event.ts.isoformat()),
    ]
    table = "".join(
        f'<tr><th style="text-align:left;padding:2px 12px 2px 0">{e(k)}</th><td>{e(v)}</td></tr>'
        for k, v in rows
    )
    link = f'<p><a href="{e(event.url, quote=True)}">Open the run in Vetting</a></p>' if event.url else ""
    text = f"<p>{e(message.clean(event.message, 2000))}</p>" if event.message else ""
    return (
        '<!doctype html><html><body style="font-family:sans-serif">'
        f'<h2 style="color:{colour}">{e(message.title(event))}</h2>{text}'
        f"<table>{table}</table>{link}</body></html>"
    )


class SmtpNotifier:
    def __init__(self, config: SmtpConfig | dict) -> None:
        self.config = c = convert_config(config, SmtpConfig)
        if not c.to:
            raise NotifierConfigError("smtp: to: needs at least one recipient")
        _check_address("from_addr", c.from_addr)
        for addr in c.to:
            _check_address("to", addr)
        if (c.username is None) != (c.password is None):
            raise NotifierConfigError("smtp: username and password go together")
        self.port = c.port or DEFAULT_PORTS[c.security]

    def build(self, event: RunEvent) -> EmailMessage:
        c = self.config
        msg = EmailMessage()
        msg["Subject"] = message.clean(f"{c.subject_prefix} {message.title(event)}".strip(), 250)
        msg["From"] = c.from_addr
        msg["To"] = ", ".join(c.to)
        msg["Date"] = formatdate(localtime=False)
        msg["Message-ID"] = make_msgid(domain=c.from_addr.rpartition("@")[2] or None)
        msg["X-Vetting-Event"] = message.kind_of(event)
        if event.run_id is not None:
            msg["X-Vetting-Run"] = str(event.run_id)
        if event.plan_id is not None:
            msg["X-Vetting-Plan"] = str(event.plan_id)
        msg.set_content(message.body(event))
        msg.add_alternative(html_body(event), subtype="html")
        return msg

    def _tls_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.config.ca_file)
        if not self.config.verify_tls:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    def _deliver(self, msg: EmailMessage) -> None:
        """Blocking: runs in a worker thread."""
        c = self.config
        try:
            if c.security == "tls":
                smtp: smtplib.SMTP = smtplib.SMTP_SSL(
                    c.host, self.port, timeout=c.timeout_s, context=self._tls_context()
                )
            else:
                smtp = smtplib.SMTP(c.host, self.port, timeout=c.timeout_s)
            with smtp:
                smtp.ehlo()
                if c.security == "starttls":
                    if not smtp.has_extn("starttls"):
                        raise DeliveryError(
                            f"smtp {c.host}:{self.port} does not offer STARTTLS; refusing to send in clear text"
                        )
                    smtp.starttls(context=self._tls_context())
                    smtp.ehlo()
                if c.username is not None:
                    smtp.login(c.username, c.password or "")
                refused = smtp.send_message(msg)
                if refused:
                    log.warning("notify.smtp.partially_refused", refused=sorted(refused))
        except DeliveryError:
            raise
        except (smtplib.SMTPException, OSError) as exc:
            raise DeliveryError(f"smtp {c.host}:{self.port}: {type(exc).__name__}: {exc}") from None

    async def send(self, event: RunEvent) -> None:
        msg = self.build(event)
        await anyio.to_thread.run_sync(self._deliver, msg, abandon_on_cancel=True)


@hookimpl
def vetting_notifiers():
    return [
        NotifierSpec(
            kind="smtp",
            factory=SmtpNotifier,
            config_type=SmtpConfig,
            description="mail (plain text + HTML) over STARTTLS, implicit TLS or a trusted relay",
        )
    ]
