"""A PXE client's first DHCP packet, sent for real, and what came back: for the tests of
the ProxyDHCP answers, which must carry exactly the fields a firmware or iPXE decides
on (iPXE takes a ProxyDHCP answer only with a PXE menu, or with a next-server and a
file name).

    ip netns exec NS python -m tests.support.dhcpprobe --interface IF --mac MAC --arch 0 [--ipxe]
    ip netns exec NS python -m tests.support.dhcpprobe --interface IF --mac MAC --arch 7 --server 10.0.0.1

The first broadcasts a DHCPDISCOVER to port 67 (as a firmware PXE client, architecture
``--arch``, or as iPXE with ``--ipxe``: option 175); the second sends what a UEFI
firmware sends next to a ProxyDHCP server, a DHCPREQUEST to its port 4011 (the
interface needs an address for that). Prints one JSON object per answer heard within
``--wait`` seconds: ``siaddr``, ``yiaddr``, ``file``, ``options`` (code → hex),
``vendor_options`` (option 43 split into its sub-options, code → hex), ``peer``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import struct
import time

MAGIC = b"\x63\x82\x53\x63"


def _option(code: int, value: bytes) -> bytes:
    return bytes([code, len(value)]) + value


def packet(mac: str, arch: int, *, ipxe: bool, request: bool, ciaddr: str = "0.0.0.0") -> tuple[int, bytes]:
    xid = int.from_bytes(os.urandom(4), "big")
    chaddr = bytes.fromhex(mac.replace(":", "")).ljust(16, b"\0")
    header = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 0, xid, 0, 0x8000, socket.inet_aton(ciaddr),
                         bytes(4), bytes(4), bytes(4), chaddr, bytes(64), bytes(128))
    options = [
        _option(53, bytes([3 if request else 1])),
        _option(60, f"PXEClient:Arch:{arch:05d}:UNDI:003016".encode()),
        _option(93, arch.to_bytes(2, "big")),
        _option(94, b"\x01\x03\x10"),
        _option(97, bytes(17)),
        _option(55, bytes([1, 3, 43, 60, 66, 67, 175])),
    ]
    if ipxe:
        options.append(_option(175, b"\x13\x01\x01"))  # iPXE's feature list: "http"
    return xid, header + MAGIC + b"".join(options) + b"\xff"


def _split(data: bytes) -> dict[int, bytes]:
    out, i = {}, 0
    while i < len(data) and data[i] != 255:
        if data[i] == 0:
            i += 1
            continue
        out[data[i]] = data[i + 2 : i + 2 + data[i + 1]]
        i += 2 + data[i + 1]
    return out


def parse(data: bytes) -> dict:
    yiaddr, siaddr = data[16:20], data[20:24]
    options = _split(data[240:]) if data[236:240] == MAGIC else {}
    return {
        "yiaddr": socket.inet_ntoa(yiaddr), "siaddr": socket.inet_ntoa(siaddr),
        "file": data[108:236].split(b"\0", 1)[0].decode(errors="replace"),
        "options": {str(k): v.hex() for k, v in options.items()},
        "vendor_options": {str(k): v.hex() for k, v in _split(options.get(43, b"")).items()},
    }


def _source_address(server: str) -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((server, 4011))  # no packet: the route's source address
        return s.getsockname()[0]


def probe(interface: str, mac: str, arch: int, *, ipxe: bool, server: str | None, wait: float) -> list[dict]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode())
        if server:  # a DHCPREQUEST to the ProxyDHCP server's port 4011, from ours, with our address
            ciaddr = _source_address(server)
            s.bind((ciaddr, 4011))
            xid, data = packet(mac, arch, ipxe=ipxe, request=True, ciaddr=ciaddr)
            s.sendto(data, (server, 4011))
        else:
            s.bind(("", 68))
            xid, data = packet(mac, arch, ipxe=ipxe, request=False)
            s.sendto(data, ("255.255.255.255", 67))
        answers, deadline = [], time.monotonic() + wait
        while (left := deadline - time.monotonic()) > 0:
            s.settimeout(left)
            try:
                reply, peer = s.recvfrom(2048)
            except TimeoutError:
                break
            if len(reply) >= 240 and reply[0] == 2 and int.from_bytes(reply[4:8], "big") == xid:
                answers.append({**parse(reply), "peer": f"{peer[0]}:{peer[1]}"})
        return answers


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--interface", required=True)
    ap.add_argument("--mac", required=True)
    ap.add_argument("--arch", type=int, default=0)
    ap.add_argument("--ipxe", action="store_true")
    ap.add_argument("--server", help="send a DHCPREQUEST to this ProxyDHCP server's port 4011")
    ap.add_argument("--wait", type=float, default=1.0)
    a = ap.parse_args()
    for answer in probe(a.interface, a.mac, a.arch, ipxe=a.ipxe, server=a.server, wait=a.wait):
        print(json.dumps(answer))
