"""Real BMC emulators on loopback for the boot-provider tests.

    with IpmiSim(tmp_path / "bmc", password="s3cret") as bmc:
        bmc.config(password_env="BMC_PW")     # an ``ipmi`` boot_config for this BMC
        bmc.powered                           # is the "machine" running?
        bmc.calls()                           # what ipmi_sim asked the chassis hook

    with SushyEmulator(tmp_path / "rf", power_on_cmd="exec qemu-system-x86_64 …") as rf:
        rf.config(password_file=...)          # a ``redfish`` boot_config
        rf.system()                           # the ComputerSystem resource (JSON)
        rf.powered                            # with power_on_cmd: as IpmiSim

:class:`IpmiSim` runs OpenIPMI's ``ipmi_sim`` (Debian ``openipmi``) with one
administrator; its chassis power goes through ``chassis_control.sh`` (next to this
file), which starts the command in ``power_on_cmd`` (a ``sleep`` unless the test gives
one: a QEMU VM, say) on power on and kills it on power off, so power is a process the
test can observe. Both skip the test with the reason when the emulator is missing, and
both are stopped (with what they started) when the block ends.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
CHASSIS_CONTROL = HERE / "chassis_control.sh"
IPMI_USER = "vetting"


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


class EmulatedBmc:
    """An emulator run for a ``with`` block (``start()``, ``stop()``), and what its
    chassis hook (``chassis_control.sh``) did, read from the hook's state folder
    ``self.state``: the "machine" is the process the hook started."""

    state: Path

    def start(self) -> Any:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Any:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pid(self) -> int | None:
        try:
            return int((self.state / "pid").read_text())
        except (OSError, ValueError):
            return None

    @property
    def powered(self) -> bool:
        pid = self.pid
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    @property
    def boot_device(self) -> str:
        try:
            return (self.state / "boot").read_text().strip()
        except OSError:
            return "default"

    def calls(self) -> list[str]:
        try:
            return (self.state / "calls.log").read_text().splitlines()
        except OSError:
            return []

    def power_off_machine(self) -> None:
        """Kill the machine process (what the hook's power off does), for teardown."""
        pid = self.pid
        if pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        (self.state / "pid").unlink(missing_ok=True)


class IpmiSim(EmulatedBmc):
    def __init__(self, directory: Path, *, password: str = "s3cret", power_on_cmd: str | None = None) -> None:
        for tool in ("ipmi_sim", "ipmitool"):
            if shutil.which(tool) is None:
                pytest.skip(f"{tool} is not installed (Debian packages openipmi, ipmitool)")
        self.dir = Path(directory).resolve()
        self.state = self.dir / "chassis"
        self.state.mkdir(parents=True, exist_ok=True)
        (self.dir / "persist").mkdir(exist_ok=True)
        self.password = password
        self.port = free_port(socket.SOCK_DGRAM)
        self.proc: subprocess.Popen[bytes] | None = None
        if power_on_cmd is not None:
            (self.state / "power_on_cmd").write_text(power_on_cmd)
        # ipmi_sim's lan.conf: one LAN channel on loopback, one admin user (user 1, the
        # anonymous one, is left out: no access without a password)
        (self.dir / "lan.conf").write_text(
            f'name "vetting-test"\n'
            f"set_working_mc 0x20\n"
            f"startlan 1\n"
            f"  addr 127.0.0.1 {self.port}\n"
            f"  priv_limit admin\n"
            f"  allowed_auths_callback md5\n"
            f"  allowed_auths_user md5\n"
            f"  allowed_auths_operator md5\n"
            f"  allowed_auths_admin md5\n"
            f"  guid a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5\n"
            f"endlan\n"
            f'user 2 true "{IPMI_USER}" "{password}" admin 10 md5\n'
            f'user 3 true "viewer" "{password}" user 10 md5\n'
            f'chassis_control "{CHASSIS_CONTROL} {self.state}"\n'
        )
        (self.dir / "cmd.emu").write_text(
            "mc_setbmc 0x20\n"
            "mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr\n"
            "mc_enable 0x20\n"
        )

    def start(self) -> IpmiSim:
        self.proc = subprocess.Popen(
            ["ipmi_sim", "-n", "-c", str(self.dir / "lan.conf"), "-f", str(self.dir / "cmd.emu"),
             "-s", str(self.dir / "persist")],
            stdin=subprocess.DEVNULL, stdout=open(self.dir / "ipmi_sim.log", "ab"), stderr=subprocess.STDOUT,
            cwd=self.dir,
        )
        deadline = time.monotonic() + 10
        while True:
            res = self.ipmitool("chassis", "power", "status")
            if res.returncode == 0:
                return self
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = (self.dir / "ipmi_sim.log").read_text(errors="replace")
                raise RuntimeError(f"ipmi_sim did not come up: {res.stderr.strip()} / {log[-500:]}")
            time.sleep(0.1)

    def ipmitool(self, *command: str, password: str | None = None) -> subprocess.CompletedProcess[str]:
        """ipmitool against this BMC, the way the provider calls it (password via -E)."""
        argv = ["ipmitool", "-I", "lanplus", "-H", "127.0.0.1", "-p", str(self.port), "-U", IPMI_USER,
                "-E", "-C", "3", "-N", "1", "-R", "2", *command]
        env = {**os.environ, "IPMI_PASSWORD": password or self.password, "LC_ALL": "C"}
        return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=30)

    def config(self, **kw: Any) -> dict[str, Any]:
        """A boot_config for the ``ipmi`` provider (give password_env or password_file)."""
        return {"address": "127.0.0.1", "port": self.port, "username": IPMI_USER, "cipher_suite": 3, **kw}

    def stop(self) -> None:
        self.power_off_machine()
        _stop(self.proc)


class _PowerNotifications(http.server.BaseHTTPRequestHandler):
    """Receives the fake driver's external notifications (a PUT of the system's state on
    every change) and drives the machine through ``chassis_control.sh``."""

    def do_PUT(self) -> None:  # noqa: N802 (http.server's name)
        system = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        pending = (system.get("pending_power") or {}).get("power_state")
        state = self.server.state  # type: ignore[attr-defined]
        if pending and "Restart" in pending:
            action = ["reset", "1"]
        elif pending == "On":
            action = ["power", "1"]
        elif pending == "Off":
            action = ["power", "0"]
        else:
            action = []
        if action:
            subprocess.run([str(CHASSIS_CONTROL), str(state), "set", *action], check=False, timeout=30)
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


class SushyEmulator(EmulatedBmc):
    """``sushy-emulator`` (PyPI ``sushy-tools``) with its fake driver: one ComputerSystem
    whose power changes take effect 1–11 s after the request, as on hardware (the
    driver's own delay), behind HTTP Basic authentication, over HTTPS with a fresh
    self-signed certificate (``tls=True``, the default) or plain HTTP.

    With ``power_on_cmd`` the system is a machine too: the driver's external
    notifications (a PUT on each change) reach a receiver here that starts the command
    when a power-on is accepted, kills it on power off and restarts it on a reset, with
    the same hook and the same observables (``powered``, ``pid``, ``calls()``) as
    :class:`IpmiSim`."""

    def __init__(self, directory: Path, *, mac: str = "52:54:00:00:00:01", password: str = "s3cret",
                 tls: bool = True, allow_power_off: bool = True, power_on_cmd: str | None = None) -> None:
        self.exe = Path(sys.executable).with_name("sushy-emulator")
        if not self.exe.exists():
            pytest.skip("sushy-emulator is not installed (pip install sushy-tools: the test extra)")
        import bcrypt  # installed with sushy-tools

        self.dir = Path(directory).resolve()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.password = password
        self.uuid = "4c4c4544-0000-1000-8000-0000000000" + mac.replace(":", "")[-2:]
        self.tls = tls
        self.cert = self.dir / "bmc.pem"
        self.proc: subprocess.Popen[bytes] | None = None
        htpasswd = self.dir / "htpasswd"
        htpasswd.write_text(f"vetting:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()}\n")
        (self.dir / "state").mkdir(exist_ok=True)
        conf = {
            "SUSHY_EMULATOR_LISTEN_IP": "127.0.0.1",
            "SUSHY_EMULATOR_LISTEN_PORT": self.port,
            "SUSHY_EMULATOR_FAKE_DRIVER": True,
            "SUSHY_EMULATOR_AUTH_FILE": str(htpasswd),
            "SUSHY_EMULATOR_STATE_DIR": str(self.dir / "state"),
            "SUSHY_EMULATOR_DISABLE_POWER_OFF": not allow_power_off,
            "SUSHY_EMULATOR_FAKE_SYSTEMS": [
                {"uuid": self.uuid, "name": "node", "power_state": "Off", "nics": [{"mac": mac}]}
            ],
        }
        if tls:
            subprocess.run(
                ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                 "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                 "-keyout", str(self.dir / "bmc.key"), "-out", str(self.cert)],
                check=True, capture_output=True, timeout=30,
            )
            conf["SUSHY_EMULATOR_SSL_CERT"] = str(self.cert)
            conf["SUSHY_EMULATOR_SSL_KEY"] = str(self.dir / "bmc.key")
        self.state = self.dir / "chassis"
        self.state.mkdir(exist_ok=True)
        self.receiver: http.server.HTTPServer | None = None
        self._serving: threading.Thread | None = None
        if power_on_cmd is not None:
            (self.state / "power_on_cmd").write_text(power_on_cmd)
            self.receiver = http.server.HTTPServer(("127.0.0.1", 0), _PowerNotifications)
            self.receiver.state = self.state  # type: ignore[attr-defined]
            conf["SUSHY_EMULATOR_FAKE_SYSTEMS"][0]["external_notifier"] = True
            conf["EXTERNAL_NOTIFICATION_URL"] = f"http://127.0.0.1:{self.receiver.server_port}/"
        (self.dir / "emulator.conf").write_text("".join(f"{k} = {v!r}\n" for k, v in conf.items()))
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.system_path = f"/redfish/v1/Systems/{self.uuid}"

    def start(self) -> SushyEmulator:
        if self.receiver is not None:
            self._serving = threading.Thread(target=self.receiver.serve_forever, daemon=True)
            self._serving.start()
        self.proc = subprocess.Popen(
            [str(self.exe), "--config", str(self.dir / "emulator.conf")],
            stdin=subprocess.DEVNULL, stdout=open(self.dir / "emulator.log", "ab"), stderr=subprocess.STDOUT,
        )
        wait_until(lambda: self._up(), 30, "sushy-emulator to answer")
        return self

    def _up(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            log = (self.dir / "emulator.log").read_text(errors="replace")
            raise RuntimeError(f"sushy-emulator exited: {log[-800:]}")
        import httpx

        try:
            self.get("/redfish/v1/")
        except httpx.TransportError:
            return False
        return True

    def get(self, path: str) -> dict[str, Any]:
        import ssl

        import httpx

        verify = ssl.create_default_context(cafile=str(self.cert)) if self.tls else False
        r = httpx.get(self.url + path, auth=("vetting", self.password), verify=verify, timeout=10)
        r.raise_for_status()
        return r.json()

    def system(self) -> dict[str, Any]:
        return self.get(self.system_path)

    def power_state(self) -> str:
        return str(self.system()["PowerState"])

    def config(self, **kw: Any) -> dict[str, Any]:
        """A boot_config for the ``redfish`` provider (give password_env or password_file)."""
        base: dict[str, Any] = {"address": self.url, "username": "vetting"}
        if self.tls:
            base["ca_file"] = str(self.cert)
        return {**base, **kw}

    def stop(self) -> None:
        _stop(self.proc)
        if self.receiver is not None:
            if self._serving is not None:
                self.receiver.shutdown()  # waits for serve_forever: only once it runs
            self.receiver.server_close()
        self.power_off_machine()


def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


__all__ = ["EmulatedBmc", "IpmiSim", "SushyEmulator", "free_port", "wait_until"]
