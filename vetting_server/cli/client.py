"""The operator API over HTTP, as the client commands reach it: where the server is
(``--server``, ``$VETTING_SERVER`` or the configuration) and with which token."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from .errors import USAGE, CliError, http_error


def _settings(args: argparse.Namespace) -> Any:
    from vetting_core.config import ConfigError, load_settings

    path = args.config or os.environ.get("VETTING_CONFIG")
    if path is None and Path("vetting.yaml").is_file():
        path = "vetting.yaml"
    try:
        return load_settings(path)
    except ConfigError as exc:
        raise CliError(f"{exc} (fix the configuration file or the VETTING__ variable)") from None
    except OSError as exc:
        raise CliError(f"cannot read the configuration file {path}: {exc.strerror or exc}: "
                       "pass an existing file with --config or $VETTING_CONFIG") from None


# ------------------------------------------------------------------------- client side


class Client:
    """The operator API over HTTP. Every failure becomes one :class:`CliError` line."""

    def __init__(self, args: argparse.Namespace) -> None:
        import httpx

        server = getattr(args, "server", None) or os.environ.get("VETTING_SERVER")
        if not server:
            settings = _settings(args)
            s = settings.server
            server = s.public_url or f"http://{'127.0.0.1' if s.host in ('0.0.0.0', '::') else s.host}:{s.port}"
        token = getattr(args, "token", None) or os.environ.get("VETTING_TOKEN")
        if not token:
            raise CliError("no API token: pass --token or set $VETTING_TOKEN (create one with 'vetting token create')")
        if not server.startswith(("http://", "https://")):
            raise CliError(f"the server URL {server!r} must start with http:// or https:// (--server or $VETTING_SERVER)",
                           USAGE)
        self.base = server.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"}
        command = getattr(args, "command_line", None)
        if command:  # a run started by this command records it as its origin
            headers["X-Vetting-Command"] = command.encode("ascii", "replace").decode()
        self.http = httpx.Client(base_url=self.base, headers=headers, timeout=30)

    def unreachable(self, exc: Exception) -> CliError:
        why = str(exc) or type(exc).__name__
        return CliError(f"cannot reach the server at {self.base} ({why}): is 'vetting serve' running there? "
                        "set --server or $VETTING_SERVER")

    def call(self, method: str, path: str, **kw: Any) -> Any:
        import httpx

        try:
            r = self.http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise self.unreachable(exc) from None
        if r.status_code >= 400:
            try:
                body: Any = r.json()
            except ValueError:
                body = r.text[:300]
            raise http_error(method, path, r.status_code, body)
        if r.status_code == 204:
            return None
        try:
            return r.json()
        except ValueError:
            raise CliError(f"{self.base} answered {method} {path} with something that is not JSON: "
                           "is --server a Vetting server?") from None


def _host_id(c: Client, ref: str) -> int:
    if ref.isdigit():
        return int(ref)
    for h in c.call("GET", "/api/v1/hosts", params={"limit": 1000})["items"]:
        if h["name"] == ref:
            return int(h["id"])
    raise CliError(f"no host named {ref!r}: 'vetting host list' shows the registered hosts")
