"""Real receivers on loopback for the notifier tests.

:class:`HttpReceiver` is a threaded ``http.server`` that records every request and
answers according to the path: ``/ok/...`` 200, ``/fail/...`` 500, ``/hang/...`` never
answers until the test ends, ``/flaky/...`` 500 for the first two requests then 200,
``/hook/...`` verifies the webhook HMAC with the shared secret (401 when it fails).

:func:`smtp_server` runs an aiosmtpd SMTP server (plain, STARTTLS-required or
implicit TLS, optionally with AUTH) that records the messages it accepted.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import socket
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from vetting_notifiers.webhook import SignatureError, verify_signature

WEBHOOK_SECRET = "s3cret-for-tests-0123456789"


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    verified: bool | None = None
    verify_error: str | None = None


class HttpReceiver:
    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.lock = threading.Lock()
        self.release = threading.Event()
        self.flaky_count: dict[str, int] = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output quiet
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                req = Request("POST", self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                status = 200
                if self.path.startswith("/hook/"):
                    try:
                        verify_signature(
                            WEBHOOK_SECRET,
                            body,
                            req.headers.get("x-vetting-timestamp"),
                            req.headers.get("x-vetting-signature"),
                        )
                        req.verified = True
                    except SignatureError as exc:
                        req.verified, req.verify_error = False, str(exc)
                        status = 401
                elif self.path.startswith("/fail/"):
                    status = 500
                elif self.path.startswith("/flaky/"):
                    with receiver.lock:
                        n = receiver.flaky_count.get(self.path, 0) + 1
                        receiver.flaky_count[self.path] = n
                    status = 500 if n <= 2 else 200
                with receiver.lock:
                    receiver.requests.append(req)
                if self.path.startswith("/hang/"):
                    receiver.release.wait(30)
                    return
                payload = b'{"ok":true}' if status < 300 else b'{"error":"nope"}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> HttpReceiver:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    def matching(self, prefix: str) -> list[Request]:
        with self.lock:
            return [r for r in self.requests if r.path.startswith(prefix)]

    def wait_for(self, prefix: str, n: int, timeout: float = 5.0) -> list[Request]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.matching(prefix)
            if len(got) >= n:
                return got
            time.sleep(0.01)
        return self.matching(prefix)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_cert(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1/localhost made with the openssl CLI."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@dataclass
class MailSink:
    messages: list[email.message.EmailMessage] = field(default_factory=list)
    envelopes: list = field(default_factory=list)
    logins: list[str] = field(default_factory=list)

    async def handle_DATA(self, server, session, envelope):
        self.envelopes.append(envelope)
        self.messages.append(email.message_from_bytes(envelope.original_content, policy=email.policy.default))
        return "250 OK"


@contextlib.contextmanager
def smtp_server(
    *,
    mode: str = "plain",  # plain | starttls | tls
    cert: tuple[Path, Path] | None = None,
    users: dict[str, str] | None = None,
):
    sink = MailSink()
    kwargs: dict = {}
    if mode in ("starttls", "tls"):
        assert cert is not None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
        if mode == "starttls":
            kwargs.update(tls_context=ctx, require_starttls=True)
        else:
            kwargs.update(ssl_context=ctx)
    if users is not None:

        def authenticator(server, session, envelope, mechanism, auth_data):
            if isinstance(auth_data, LoginPassword):
                login, password = auth_data.login.decode(), auth_data.password.decode()
                if users.get(login) == password:
                    sink.logins.append(login)
                    return AuthResult(success=True)
            return AuthResult(success=False, handled=False)

        # aiosmtpd only counts STARTTLS as "TLS" for auth_require_tls; with implicit TLS
        # the whole connection is already encrypted, so the flag is only set for starttls
        kwargs.update(authenticator=authenticator, auth_required=True, auth_require_tls=mode == "starttls")
    controller = Controller(sink, hostname="127.0.0.1", port=free_port(), **kwargs)
    controller.start()
    try:
        yield controller, sink
    finally:
        controller.stop()
