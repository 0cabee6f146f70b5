"""The built-in boot providers, with a real UDP receiver on loopback for Wake-on-LAN."""

import socket

import msgspec
import pytest

from vetting_core import load_registry
from vetting_core.model import Host
from vetting_server.boot.providers import WakeOnLan, WolConfig, magic_packet, mac_bytes


def test_magic_packet_layout():
    packet = magic_packet("AA-BB-CC-DD-EE-0F")
    assert len(packet) == 102
    assert packet[:6] == b"\xff" * 6
    assert packet[6:] == bytes.fromhex("aabbccddee0f") * 16


@pytest.mark.parametrize("bad", ["", "aa:bb:cc:dd:ee", "aa:bb:cc:dd:ee:gg", "aa:bb-cc:dd:ee:ff", "aabbccddeeff00"])
def test_invalid_macs_are_rejected_with_a_message(bad):
    with pytest.raises(ValueError, match="invalid MAC"):
        mac_bytes(bad)


def test_wol_config_validation_names_the_field():
    with pytest.raises(msgspec.ValidationError, match=r"\$\.broadcast_ip"):
        msgspec.convert({"broadcast_ip": "not-an-ip"}, WolConfig)
    with pytest.raises(msgspec.ValidationError, match="port"):
        msgspec.convert({"port": 70000}, WolConfig)
    with pytest.raises(msgspec.ValidationError, match="unknown field"):
        msgspec.convert({"broadcst_ip": "10.0.0.255"}, WolConfig)


@pytest.mark.anyio
async def test_wol_sends_real_magic_packets_to_a_udp_receiver():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind(("127.0.0.1", 0))
        rx.settimeout(5)
        port = rx.getsockname()[1]
        provider = WakeOnLan(WolConfig(broadcast_ip="127.0.0.1", port=port, repeat=2))
        host = Host(name="node07", mac="0c:c4:7a:11:22:33")
        message = await provider.power_on(host)
        received = [rx.recvfrom(200)[0] for _ in range(2)]
    assert received == [magic_packet("0c:c4:7a:11:22:33")] * 2
    assert f"127.0.0.1:{port}" in message


def test_boot_providers_are_found_through_entry_points():
    reg = load_registry()
    assert {"wol", "manual", "agent"} <= set(reg.boot_providers)
    assert reg.owner("boot_providers", "wol") == "boot"
