"""The platform probe on this machine and on fixture trees."""

import os
from pathlib import Path

import pytest
from vetting_core.inventory import merge_fragments, typed

from vetting_example import plugin
from vetting_example.platform_probe import decode_taint, read_platform

TREES = Path(__file__).parent / "fixtures" / "platform"


def test_captured_bios_vm():
    frag = read_platform(TREES / "bios-vm")
    assert frag["boot"] == {"firmware": "bios", "secure_boot": None, "setup_mode": None, "efi_bits": None}
    k = frag["kernel"]
    assert k["release"] == "6.18.44-fc-v669"
    assert k["tainted"] == 0 and k["taint_flags"] == [] and k["machine_check"] is False
    assert "console=ttyS0" in k["cmdline"]


def test_uefi_secure_boot_and_a_machine_check():
    frag = read_platform(TREES / "uefi-secureboot-mce")
    assert frag["boot"] == {"firmware": "uefi", "secure_boot": True, "setup_mode": False, "efi_bits": 64}
    assert frag["kernel"]["taint_flags"] == ["M", "O"]
    assert frag["kernel"]["machine_check"] is True


def test_uefi_in_setup_mode():
    frag = read_platform(TREES / "uefi-setup-mode")
    assert frag["boot"]["secure_boot"] is False and frag["boot"]["setup_mode"] is True


def test_truncated_efivar_is_unknown_not_false(tmp_path):
    efivars = tmp_path / "sys/firmware/efi/efivars"
    efivars.mkdir(parents=True)
    (efivars / "SecureBoot-8be4df61-93ca-11d2-aa0d-e0f4a4c7fe0b").write_bytes(b"\x06\x00")
    frag = read_platform(tmp_path)
    assert frag["boot"]["secure_boot"] is None
    assert frag["unavailable"] == {"kernel": f"{tmp_path / 'proc'} is not mounted"}


def test_empty_root_reports_unavailable_instead_of_raising(tmp_path):
    frag = read_platform(tmp_path)
    assert set(frag) == {"unavailable"} and set(frag["unavailable"]) == {"kernel", "boot"}


def test_decode_taint():
    assert decode_taint(0) == []
    assert decode_taint(1 | 16 | 512) == ["P", "M", "W"]


@pytest.mark.anyio
async def test_probe_on_this_machine(vetting_registry):
    probe = vetting_registry(plugin).probes["platform"]
    frag = await probe.collect()
    assert frag["boot"]["firmware"] == ("uefi" if os.path.isdir("/sys/firmware/efi") else "bios")
    assert frag["kernel"]["release"] == os.uname().release
    # the fragment merges into an inventory document; its sections survive as extras
    doc = merge_fragments([("platform", frag)])
    assert typed(doc).extra["kernel"]["release"] == os.uname().release
