"""Every error of the ``vetting`` CLI is one line naming the problem and the fix, with
exit status 2 (usage) or 1 (runtime), and never a traceback.

The sweep runs the real command in a subprocess against the real failure: bad URL
forms, a PostgreSQL driver that cannot be imported, a database that does not exist,
missing files, end of input at the password prompt (a pipe and a real terminal),
a server that is not there, and 401/403/404/409/422 replies (from the real server, and
403 from a stand-in HTTP server on loopback: the operator API never answers 403 to
the CLI's requests, but a proxy in front of it may).
"""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.support.server import REPO, ServerProcess

from .conftest import PG_HOST, PG_PORT, _pg_up


def vetting(*args: str, config: Path | None = None, env: dict[str, str] | None = None,
            input: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("VETTING")}
    e.update(env or {})
    argv = [sys.executable, "-m", "vetting_server"] + (["--config", str(config)] if config else []) + list(args)
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, env=e, input=input,
                          cwd=cwd or REPO, stdin=None if input is not None else subprocess.DEVNULL)


def check(cp: subprocess.CompletedProcess[str], code: int, *words: str) -> str:
    """One line on stderr, the exit status, the key words; no traceback anywhere."""
    out = cp.stdout + cp.stderr
    assert "Traceback" not in out, out
    assert cp.returncode == code, (cp.returncode, out)
    lines = cp.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vetting: "), cp.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def config(tmp_path: Path, url: str) -> Path:
    p = tmp_path / "vetting.yaml"
    p.write_text(f"database:\n  url: {url!r}\nserver:\n  data_dir: {str(tmp_path / 'var')!r}\n")
    return p


def no_asyncpg(tmp_path: Path) -> dict[str, str]:
    """An interpreter in which ``import asyncpg`` fails as if it were not installed."""
    fake = tmp_path / "no-asyncpg" / "asyncpg"
    fake.mkdir(parents=True, exist_ok=True)
    (fake / "__init__.py").write_text('raise ModuleNotFoundError("No module named \'asyncpg\'", name="asyncpg")\n')
    return {"PYTHONPATH": os.pathsep.join([str(fake.parent), str(REPO)])}


def test_database_errors(tmp_path):
    line = check(vetting("db", "migrate", config=config(tmp_path, "sqlite://var/x.db")), 1,
                 "sqlite://var/x.db", "is not a SQLite file URL", "sqlite:///relative/path.db")
    assert "$.database.url" in line
    check(vetting("serve", config=config(tmp_path, "mysql://db/v")), 1, "must start with sqlite:/// or postgresql://")
    check(vetting("db", "migrate", config=config(tmp_path, "postgresql://u@h:5432")), 1, "names no database")
    # the PostgreSQL driver is not installed: the fix is the extra
    pg = config(tmp_path, "postgresql://postgres:secret@127.0.0.1:5432/test")
    for cmd in (["db", "migrate"], ["serve"], ["token", "create"]):
        line = check(vetting(*cmd, config=pg, env=no_asyncpg(tmp_path)), 1,
                     "driver (asyncpg) is not installed", "pip install 'vetting[postgres]'")
        assert "secret" not in line and "postgres:***@" in line
    # a SQLite file whose directory cannot be created
    blocker = tmp_path / "file"
    blocker.write_text("")
    check(vetting("db", "migrate", config=config(tmp_path, f"sqlite:///{blocker}/sub/x.db")), 1,
          "cannot open the SQLite database", "directory")
    # nothing listens on the port
    check(vetting("db", "migrate", config=config(tmp_path, "postgresql://postgres@127.0.0.1:1/x")), 1,
          "unreachable", "is it running?")


@pytest.mark.postgres
def test_a_postgresql_database_that_does_not_exist(tmp_path):
    if not _pg_up():
        pytest.skip(f"PostgreSQL is not running on {PG_HOST}:{PG_PORT}")
    url = f"postgresql://postgres@{PG_HOST}:{PG_PORT}/vetting_no_such_db_xyz"
    for cmd in (["db", "migrate"], ["serve"]):
        check(vetting(*cmd, config=config(tmp_path, url)), 1,
              "'vetting_no_such_db_xyz' does not exist", "createdb", "database.url")


def test_missing_files_and_usage(tmp_path):
    check(vetting("db", "migrate", config=tmp_path / "nope.yaml"), 1, "cannot read configuration file", "nope.yaml")
    check(vetting("host", "add", "n1", "--mac", "aa:bb:cc:dd:ee:01", "--spec", str(tmp_path / "missing.yaml"),
                  "--server", "http://127.0.0.1:1", "--token", "t"), 1, "cannot read the spec file", "missing.yaml")
    check(vetting("host", "add", "n1", "--mac", "aa:bb:cc:dd:ee:01", "--boot-config", "{nope",
                  "--server", "http://127.0.0.1:1", "--token", "t"), 2, "--boot-config is not JSON")
    check(vetting(), 2, "required", "--help")
    check(vetting("run", "show", "abc"), 2, "invalid int value: 'abc'", "'vetting run show --help'")
    check(vetting("run", "frobnicate"), 2, "invalid choice")
    check(vetting("run", "override", "1", "--flag", "wipe", "--server", "http://127.0.0.1:1", "--token", "t"),
          2, "--flag 'wipe': write KEY=VALUE")
    check(vetting("run", "list", "--server", "ftp://x", "--token", "t"), 2, "must start with http://")
    check(vetting("run", "list", "--server", "http://127.0.0.1:1"), 1, "no API token", "vetting token create")


def test_end_of_input_at_the_password_prompt(tmp_path):
    cfg = config(tmp_path, f"sqlite:///{tmp_path / 'v.db'}")
    check(vetting("admin", "create", "bob", "--password-stdin", config=cfg, input=""), 1,
          "no password given (end of input)", "--password-stdin")
    # a real terminal: getpass reads /dev/tty; Ctrl-D at the prompt
    pid, fd = pty.fork()
    if pid == 0:  # the child: the terminal is its controlling tty
        os.execvpe(sys.executable, [sys.executable, "-m", "vetting_server", "--config", str(cfg), "admin", "create", "bob"],
                   {**{k: v for k, v in os.environ.items() if not k.startswith("VETTING")}, "PYTHONPATH": str(REPO)})
    out = b""
    deadline = time.monotonic() + 60
    sent = False
    status = None
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                chunk = b""
            if not chunk:
                break
            out += chunk
        if not sent and b"password for bob:" in out:
            os.write(fd, b"\x04")  # Ctrl-D
            sent = True
        done, st = os.waitpid(pid, os.WNOHANG)
        if done:
            status = st
            break
    if status is None:
        _, status = os.waitpid(pid, 0)
    text = out.decode(errors="replace")
    assert sent, text
    assert "Traceback" not in text and "EOFError" not in text, text
    assert os.WEXITSTATUS(status) == 1, text
    assert "vetting: no password given (end of input)" in text


class _Proxy403(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        body = json.dumps({"status_code": 403, "detail": "forbidden by the proxy"}).encode()
        self.send_response(403)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


def test_server_unreachable_and_http_errors(tmp_path):
    check(vetting("run", "list", "--server", "http://127.0.0.1:1", "--token", "t"), 1,
          "cannot reach the server at http://127.0.0.1:1", "vetting serve", "--server")
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), _Proxy403)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{proxy.server_address[1]}"
        check(vetting("host", "list", "--server", url, "--token", "t"), 1, "forbidden (403", "forbidden by the proxy",
              "operator token")
    finally:
        proxy.shutdown()
    with ServerProcess(tmp_path / "srv") as srv:
        base = ["--server", srv.base_url]
        tok = ["--token", srv.token]
        check(vetting("host", "list", *base, "--token", "vo_wrong"), 1, "unauthorized (401", "vetting token create")
        check(vetting("run", "show", "999", *base, *tok), 1, "not found (404", "run 999 not found")
        check(vetting("host", "show", "ghost", *base, *tok), 1, "no host named 'ghost'", "vetting host list")
        check(vetting("host", "add", "n1", "--mac", "not-a-mac", *base, *tok), 1, "invalid (422", "mac")
        host = srv.create_host("n1", "aa:bb:cc:dd:ee:01")
        check(vetting("run", "start", "n1", "--profile", "nosuch", *base, *tok), 1, "invalid (422", "nosuch")
        run_id, _ = srv.start_run(host["id"], stages=["InventoryCheck"])
        check(vetting("run", "release", str(run_id), *base, *tok), 1, "conflict (409", "cannot release")
        check(vetting("run", "retry-stage", str(run_id), *base, *tok), 1, "conflict (409")
        cp = vetting("run", "cancel", str(run_id), "--reason", "wrong host", *base, *tok)
        assert cp.returncode == 0 and cp.stdout.strip() == f"run {run_id} on n1: cancelled; now Cancelled", cp
        check(vetting("run", "cancel", str(run_id), *base, *tok), 1, "conflict (409", "Cancelled")
