"""Built-in boot providers: how the orchestrator makes a host boot into the live image.

Registered through the ``vetting`` entry-point group (entry point ``boot``) like any
third-party provider. This module imports only ``vetting_core`` and the standard
library so that an agent-only install can load every entry point.

- ``wol``: a real Wake-on-LAN magic packet (seed: ``hosts.wol_broadcast_ip``/``wol_port``).
- ``manual``: an operator powers the host on; the run waits in ``Booting``.
- ``agent``: host mode — an installed ``vetting-agent host`` picks the run up.

The BMC providers (``ipmi``, ``redfish``) live in :mod:`vetting_server.boot.bmc`.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from typing import Any

import anyio
import msgspec

from vetting_core import BootError, BootProviderSpec, hookimpl

_MAC = re.compile(r"^[0-9a-f]{2}([:-]?)[0-9a-f]{2}(\1[0-9a-f]{2}){4}$", re.IGNORECASE)


def mac_bytes(mac: str) -> bytes:
    """``aa:bb:cc:dd:ee:ff`` (or ``-``/no separators) → 6 bytes; ValueError otherwise."""
    if not _MAC.match(mac.strip()):
        raise ValueError(f"invalid MAC address {mac!r}: expected six hex pairs like aa:bb:cc:dd:ee:ff")
    return bytes.fromhex(re.sub(r"[:-]", "", mac.strip()))


def magic_packet(mac: str) -> bytes:
    """Six 0xFF bytes then the MAC sixteen times (AMD's Magic Packet format)."""
    return b"\xff" * 6 + mac_bytes(mac) * 16


class WolConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    broadcast_ip: str = "255.255.255.255"
    port: int = 9
    repeat: int = 3  # UDP is lossy: send the packet a few times

    def __post_init__(self) -> None:
        try:
            ipaddress.IPv4Address(self.broadcast_ip)
        except ValueError:
            raise msgspec.ValidationError(
                f"broadcast_ip {self.broadcast_ip!r} is not an IPv4 address - at `$.broadcast_ip`"
            ) from None
        if not 0 < self.port < 65536:
            raise msgspec.ValidationError(f"port {self.port} out of range - at `$.port`")


class WakeOnLan:
    def __init__(self, config: WolConfig) -> None:
        self.config = config

    async def power_on(self, host: Any, *, boot_target: str = "pxe") -> str:
        packet = magic_packet(host.mac)

        def send() -> None:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
                for _ in range(self.config.repeat):
                    sock.sendto(packet, (self.config.broadcast_ip, self.config.port))

        try:
            await anyio.to_thread.run_sync(send)
        except OSError as exc:
            raise BootError(
                f"could not send the Wake-on-LAN packet to {self.config.broadcast_ip}:"
                f"{self.config.port}: {exc.strerror or exc}"
            ) from None
        return (
            f"sent {self.config.repeat} Wake-on-LAN packets for {host.mac} to "
            f"{self.config.broadcast_ip}:{self.config.port}"
        )


class NoConfig(msgspec.Struct, forbid_unknown_fields=True):
    pass


class ManualBoot:
    def __init__(self, config: NoConfig) -> None:
        self.config = config

    async def power_on(self, host: Any, *, boot_target: str = "pxe") -> str:
        return f"waiting for an operator to power on {host.name} ({host.mac}) and boot it from the network"


class HostAgentBoot:
    def __init__(self, config: NoConfig) -> None:
        self.config = config

    async def power_on(self, host: Any, *, boot_target: str = "pxe") -> str:
        return f"waiting for the host-mode agent on {host.name} to pick the run up"


@hookimpl
def vetting_boot_providers():
    return [
        BootProviderSpec(
            kind="wol",
            factory=WakeOnLan,
            config_type=WolConfig,
            description="Wake-on-LAN magic packet to the host's broadcast address",
        ),
        BootProviderSpec(
            kind="manual",
            factory=ManualBoot,
            config_type=NoConfig,
            description="an operator powers the host on by hand",
        ),
        BootProviderSpec(
            kind="agent",
            factory=HostAgentBoot,
            config_type=NoConfig,
            description="host mode: the installed vetting-agent picks queued runs up",
        ),
    ]
