"""``vetting demo``: the whole system on one machine, in one command.

It starts a real server process on an embedded SQLite file, registers this machine as
a host (its own MAC, boot provider ``agent``: the host-mode agent is already running,
so there is nothing to wake), starts a non-destructive run of the chosen profile and
drives it with a real ``vetting-agent host --once`` process, then prints the live
progress and, once the server has written it, where the HTML report is (first), the
JSON and OCPTV ones; for a run that failed, the reason in one line and the run's log.
Nothing here is simulated: the stages run the real tools on this machine, and a
host-mode agent never runs a destructive stage.

Everything lives in ``--dir`` (default: a new temporary directory), which is kept so
the reports can be opened afterwards.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

SYS_NET = Path("/sys/class/net")


def this_machine_mac(sys_net: Path = SYS_NET) -> str:
    """The MAC of the first real interface (sorted by name), else a locally administered one.

    A container or VM may have only virtual NICs or none at all: the demo still needs a
    valid, unique MAC to register the host, so it falls back to ``02:…`` derived from
    the host name.
    """
    try:
        names = sorted(p.name for p in sys_net.iterdir())
    except OSError:
        names = []
    for name in names:
        try:
            mac = (sys_net / name / "address").read_text().strip().lower()
        except OSError:
            continue
        if name != "lo" and len(mac) == 17 and mac != "00:00:00:00:00:00":
            return mac
    digest = abs(hash(socket.gethostname())) & 0xFFFFFFFFFF
    return "02:" + ":".join(f"{(digest >> s) & 0xFF:02x}" for s in (32, 24, 16, 8, 0))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Demo:
    def __init__(self, workdir: Path, port: int) -> None:
        self.dir = workdir
        self.port = port or _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = workdir / "vetting.yaml"
        self.procs: list[subprocess.Popen[bytes]] = []

    def write_config(self) -> None:
        self.config.write_text(yaml.safe_dump({
            "server": {"host": "127.0.0.1", "port": self.port, "data_dir": str(self.dir / "var"),
                       "public_url": self.url},
            "database": {"url": f"sqlite:///{self.dir / 'vetting.db'}"},
            "dispatcher": {"interval_s": 0.5},
            # a live percent every 2 s in the watch (the default, 10 s, suits a fleet)
            "timeouts": {"heartbeat_interval_s": 2.0, "heartbeat_timeout_s": 60.0},
        }))

    def _spawn(self, argv: list[str], log_name: str) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VETTING__")}
        with open(self.dir / log_name, "ab") as log:
            proc = subprocess.Popen(argv, cwd=self.dir, env=env, stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def start_server(self, timeout: float = 60.0) -> None:
        proc = self._spawn([sys.executable, "-m", "vetting_server", "--config", str(self.config), "serve"], "server.log")
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"vetting demo: the server exited with {proc.returncode}; see {self.dir / 'server.log'}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"vetting demo: the server did not answer in {timeout:.0f} s; see {self.dir / 'server.log'}")
            time.sleep(0.1)

    def operator_token(self) -> str:
        cp = subprocess.run(
            [sys.executable, "-m", "vetting_server", "--config", str(self.config),
             "token", "create", "--user", "demo", "--name", "demo"],
            capture_output=True, text=True, timeout=120, cwd=self.dir,
        )
        if cp.returncode != 0:
            raise SystemExit(f"vetting demo: could not create an operator token:\n{cp.stderr}")
        return cp.stdout.strip().splitlines()[-1]

    def start_agent(self, host_token: str) -> subprocess.Popen[bytes]:
        return self._spawn([
            sys.executable, "-m", "vetting_agent.cli", "host", "--server", self.url, "--token", host_token,
            "--once", "--max-idle", "120", "--spool-dir", str(self.dir / "agent-spool"),
            "--authorized-keys", str(self.dir / "authorized_keys"), "--final-wait", "30",
        ], "agent.log")

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def wait_for_report(client: Any, run_id: int, timeout: float = 120.0) -> dict[str, Any]:
    """The run once its report is written (a failed run's report is written just after
    the run enters Failed, so the watch ends before it exists)."""
    deadline = time.monotonic() + timeout
    while True:
        run = client.call("GET", f"/api/v1/runs/{run_id}")["run"]
        if run.get("report_path") and Path(run["report_path"]).with_name("report.html").exists():
            return run
        if time.monotonic() > deadline:
            return run
        time.sleep(0.2)


def main(args: argparse.Namespace) -> int:
    from .client import Client
    from .watch import cmd_run_watch, outcome_code, report_paths

    workdir = Path(args.dir).resolve() if args.dir else Path(tempfile.mkdtemp(prefix="vetting-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    demo = Demo(workdir, args.port)
    demo.write_config()
    print(f"vetting demo in {workdir} (server log: server.log, agent log: agent.log)", flush=True)
    try:
        demo.start_server()
        print(f"server up at {demo.url} on SQLite {workdir / 'vetting.db'}", flush=True)
        client_args = argparse.Namespace(server=demo.url, token=demo.operator_token(), config=str(demo.config),
                                         command_line=getattr(args, "command_line", None))
        client = Client(client_args)
        name, mac = socket.gethostname(), this_machine_mac()
        known = [h for h in client.call("GET", "/api/v1/hosts", params={"limit": 1000})["items"] if h["mac"] == mac]
        if known:  # a rerun in the same --dir: keep the host's history, issue a new agent token
            host: dict[str, Any] = known[0]
            host_token = client.call("POST", f"/api/v1/hosts/{host['id']}/agent-token")["agent_token"]
            print(f"this machine is host {host['id']} {host['name']} ({mac}) from an earlier demo", flush=True)
        else:
            host = client.call("POST", "/api/v1/hosts", json={
                "name": name, "mac": mac, "boot_provider": "agent", "notes": "registered by vetting demo",
            })
            host_token = host["agent_token"]
            print(f"registered this machine: host {host['id']} {name} ({mac})", flush=True)
        demo.start_agent(host_token)
        body: dict[str, Any] = {"host_id": host["id"], "profile": args.profile, "non_destructive": True}
        if args.stage:
            body["stages"] = args.stage
        run = client.call("POST", "/api/v1/runs", json=body)["run"]
        print(f"run {run['id']}: profile {run['profile']}, non-destructive; live progress follows", flush=True)
        cmd_run_watch(argparse.Namespace(**vars(client_args), run=run["id"], report_line=False))  # printed below
        final = wait_for_report(client, run["id"])
        paths = report_paths(final)
        if paths and paths[0].exists():
            print(f"report: {paths[0]}")
            print(f"        {', '.join(str(p) for p in paths[1:])}")
        else:
            print(f"no report was written; see {workdir / 'server.log'}")
        rc = outcome_code(final)
        if rc != 0:
            log_path = workdir / f"run-{run['id']}.log"
            log_path.write_text(client.http.get(f"/api/v1/runs/{run['id']}/logs", params={"limit": 200000}).text)
            what = "INCOMPLETE" if rc == 3 else final["state"].upper()
            print(f"{what}: {final.get('reason') or 'see the log'}")
            print(f"log: {log_path} (agent: {workdir / 'agent.log'}, server: {workdir / 'server.log'})")
        if args.keep:
            print(f"server kept running at {demo.url}; operator token: {client_args.token}; Ctrl-C stops it")
            try:
                demo.procs[0].wait()
            except KeyboardInterrupt:
                pass
        return rc
    finally:
        demo.stop()
