"""A real BMC for the PSU tests: OpenIPMI's ``ipmi_sim`` (Debian package ``openipmi``)
serving a LAN interface on loopback, with power-supply status sensors, a redundancy
sensor and voltage rails described by full sensor records (IPMI 2.0 §43.1)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path


def _full_sdr(num: int, name: str, stype: int, etype: int, *, unit: int = 0, m: int = 0, rexp: int = 0,
              caps: int = 0x40, entity: int = 0x0A) -> str:
    nm = name.encode()
    body = [
        0x20, 0x00, num,                       # owner (BMC), LUN, sensor number
        entity, 1, 0x7F, caps, stype, etype,   # entity, instance, init, capabilities, type, event type
        0, 0, 0, 0, 0xFF, 0x7F,                # assertion/deassertion/reading masks
        0x00, unit, 0x00, 0x00,                # unsigned analog, base unit, modifier, linear
        m & 0xFF, (m >> 8) & 0x3, 0, 0, 0, (rexp & 0xF) << 4,  # M, B, accuracy, R/B exponents
        0, 0, 0xFF, 0, 0xFF, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0xC0 | len(nm), *nm,
    ]
    header = [num, 0, 0x51, 0x01, len(body)]
    return " ".join(f"0x{b:02x}" for b in header + body)


def emu_script(*, ps2_failed: bool, redundancy_lost: bool, v12_raw: int = 201, v5sb_raw: int = 168) -> str:
    """12V = raw × 0.06 V, 5V/5VSB = raw × 0.03 V, 3.3V = raw × 0.02 V."""
    sensors = [
        (1, "PS1 Status", 0x08, 0x6F, {}),
        (2, "PS2 Status", 0x08, 0x6F, {}),
        (3, "PS Redundancy", 0x08, 0x0B, {}),
        (4, "12V", 0x02, 0x01, {"unit": 4, "m": 6, "rexp": -2}),
        (5, "5V", 0x02, 0x01, {"unit": 4, "m": 3, "rexp": -2}),
        (6, "3.3V", 0x02, 0x01, {"unit": 4, "m": 2, "rexp": -2}),
        (7, "5VSB", 0x02, 0x01, {"unit": 4, "m": 3, "rexp": -2}),
        (8, "PS1 Current", 0x03, 0x01, {"unit": 5, "m": 1, "rexp": -1}),  # 0.1 A per count
    ]
    lines = ["mc_setbmc 0x20", "mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02", "sel_enable 0x20 1000 0x0a"]
    for num, name, st, et, kw in sensors:
        lines.append(f"sensor_add 0x20 0 {num} 0x{st:02x} 0x{et:02x}")
        lines.append(f"main_sdr_add 0x20 {_full_sdr(num, name, st, et, **kw)}")
        lines.append(f"sensor_set_event_support 0x20 0 {num} enable scanning per-state "
                     "000000000001111 000000000001111 000000000001111 000000000001111")
    lines += [
        "sensor_set_bit_clr_rest 0x20 0 1 0 1",                 # PS1: presence detected
        "sensor_set_bit_clr_rest 0x20 0 2 0 1",                 # PS2: presence detected
        *(["sensor_set_bit 0x20 0 2 1 1 0"] if ps2_failed else []),  # PS2: failure detected
        f"sensor_set_bit_clr_rest 0x20 0 3 {1 if redundancy_lost else 0} 1",
        f"sensor_set_value 0x20 0 4 {v12_raw} 0",
        "sensor_set_value 0x20 0 5 168 0",
        "sensor_set_value 0x20 0 6 166 0",
        f"sensor_set_value 0x20 0 7 {v5sb_raw} 0",
        "sensor_set_value 0x20 0 8 62 0",                      # 6.2 A
        "mc_enable 0x20",
    ]
    return "\n".join(lines) + "\n"


LAN_CONF = """name "vetting"
set_working_mc 0x20
  startlan 1
    addr 127.0.0.1 {port}
    priv_limit admin
    allowed_auths_callback none md2 md5 straight
    allowed_auths_user none md2 md5 straight
    allowed_auths_operator none md2 md5 straight
    allowed_auths_admin none md2 md5 straight
    guid a123456789abcdefa123456789abcdef
  endlan
  user 2 true  "admin" "secret" admin    10       none md2 md5 straight
"""


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def ipmi_sim(tmp: Path, **state):
    """Start ipmi_sim; yield the ``params.ipmi`` mapping for the PSU stage."""
    if shutil.which("ipmi_sim") is None or shutil.which("ipmitool") is None:
        import pytest

        pytest.skip("ipmi_sim (Debian package openipmi) or ipmitool not installed")
    port = _free_udp_port()
    (tmp / "lan.conf").write_text(LAN_CONF.format(port=port))
    (tmp / "sim.emu").write_text(emu_script(**state))
    proc = subprocess.Popen(
        ["ipmi_sim", "-c", str(tmp / "lan.conf"), "-f", str(tmp / "sim.emu"), "-n", "-s", str(tmp / "state")],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    iface = {"interface": "lanplus", "cipher": 3, "host": "127.0.0.1", "port": port, "user": "admin",
             "password": "secret"}
    try:
        deadline = time.monotonic() + 10
        while True:
            r = subprocess.run(
                ["ipmitool", "-I", "lanplus", "-C", "3", "-H", "127.0.0.1", "-p", str(port), "-U", "admin",
                 "-P", "secret", "mc", "info"], capture_output=True, timeout=10)
            if r.returncode == 0:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                import pytest

                pytest.skip(f"ipmi_sim did not come up: {proc.stderr.read().decode()[-300:] if proc.poll() is not None else r.stderr.decode()[-300:]}")
            time.sleep(0.2)
        yield iface
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
