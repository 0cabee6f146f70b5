"""What the agent says about the machine in ``hello``: hostname, address, MAC, boot id."""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import socket
import struct
from pathlib import Path
from urllib.parse import urlsplit

SIOCGIFADDR = 0x8915


def source_ip_for(server_url: str) -> str | None:
    """The local address the kernel would use to reach the orchestrator (a UDP
    ``connect`` sends nothing; it only selects the route)."""
    parts = urlsplit(server_url)
    host = parts.hostname
    if not host:
        return None
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except OSError:
        return None
    for family, _type, _proto, _name, addr in infos:
        with contextlib.suppress(OSError), socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect(addr)
            return s.getsockname()[0]
    return None


def interface_for_ip(ip: str, sys_net: str = "/sys/class/net") -> str | None:
    try:
        wanted = ipaddress.ip_address(ip)
    except ValueError:
        return None
    if wanted.version != 4:
        return None
    for name in sorted(os.listdir(sys_net)) if os.path.isdir(sys_net) else []:
        with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            packed = struct.pack("256s", name.encode()[:15])
            raw = fcntl.ioctl(s.fileno(), SIOCGIFADDR, packed)
            if socket.inet_ntoa(raw[20:24]) == ip:
                return name
    return None


def mac_of(interface: str | None, sys_net: str = "/sys/class/net") -> str | None:
    if not interface:
        return None
    try:
        mac = Path(sys_net, interface, "address").read_text().strip().lower()
    except OSError:
        return None
    return None if mac in ("", "00:00:00:00:00:00") else mac


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def describe_self(server_url: str) -> dict[str, str | None]:
    ip = source_ip_for(server_url)
    return {
        "hostname": socket.gethostname(),
        "ip": ip,
        "mac": mac_of(interface_for_ip(ip)) if ip else None,
        "boot_id": boot_id(),
    }
