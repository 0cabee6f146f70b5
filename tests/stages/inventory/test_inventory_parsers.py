"""Inventory parsers on captured real output (tests/fixtures/<tool>/<version>/)."""

from __future__ import annotations

import pytest

from vetting_stages.inventory import parsers as p

from ..helpers import fixture_text


def test_cpuinfo_vm():
    cpu = p.parse_cpuinfo(fixture_text("procfs/6.18/cpuinfo-vm-epyc-2cpu.txt"))
    assert cpu["model"] == "AMD EPYC" and cpu["vendor"] == "AuthenticAMD"
    assert cpu["microcode"] == "0x1000065"
    assert (cpu["sockets"], cpu["cores"], cpu["threads"]) == (1, 2, 2)
    assert "avx512f" in cpu["flags"]


def test_cpuinfo_real_servers():
    dl585 = p.parse_cpuinfo(fixture_text("procfs/unversioned/cpuinfo-hp-dl585-4x-opteron-8354.txt"))
    assert dl585["model"] == "Quad-Core AMD Opteron(tm) Processor 8354" and dl585["vendor"] == "AuthenticAMD"
    assert (dl585["sockets"], dl585["cores"], dl585["threads"]) == (4, 16, 16)
    assert dl585["microcode"] is None and "svm" in dl585["flags"]
    xen = p.parse_cpuinfo(fixture_text("procfs/unversioned/cpuinfo-xen-pv-guest-xeon-l5420.txt"))
    assert xen["model"] == "Intel(R) Xeon(R) CPU           L5420  @ 2.50GHz"  # as the kernel prints it
    # no physical/core ids: one socket, every vCPU its own core
    assert (xen["sockets"], xen["cores"], xen["threads"]) == (1, 2, 2)


def test_lscpu_json_and_merge():
    ls = p.parse_lscpu_json(fixture_text("lscpu/2.38.1/vm-epyc-2cpu.json"))
    assert (ls["sockets"], ls["cores"], ls["threads"]) == (1, 2, 2)
    assert ls["vendor"] == "AuthenticAMD"
    merged = p.merge_cpu(p.parse_cpuinfo(fixture_text("procfs/6.18/cpuinfo-vm-epyc-2cpu.txt")), ls)
    assert merged["microcode"] == "0x1000065" and merged["threads"] == 2


def test_lscpu_real_4_socket_grace_without_model_name():
    ls = p.parse_lscpu_json(fixture_text("lscpu/unversioned/nvidia-grace-4s-288c.json"))
    assert (ls["vendor"], ls["sockets"], ls["cores"], ls["threads"]) == ("ARM", 4, 288, 288)
    assert ls["model"] == "" and ls["max_mhz"] == 3420.0 and "sve2" in ls["flags"]
    # cpuinfo's model fills the gap lscpu leaves; lscpu's topology wins
    merged = p.merge_cpu({"model": "Neoverse-V2", "sockets": 1, "cores": 288, "threads": 288, "flags": []}, ls)
    assert (merged["model"], merged["sockets"], merged["cores"]) == ("Neoverse-V2", 4, 288)


def test_lscpu_nested_children_format():
    # util-linux >= 2.38 may nest fields under "children"; the parser walks them
    text = '{"lscpu":[{"field":"Model name:","data":"Neoverse-N1","children":[{"field":"Socket(s):","data":"2"},{"field":"Core(s) per socket:","data":"80"}]},{"field":"CPU(s):","data":"160"}]}'
    ls = p.parse_lscpu_json(text)
    assert (ls["model"], ls["sockets"], ls["cores"], ls["threads"]) == ("Neoverse-N1", 2, 160, 160)


def test_lscpu_garbage_is_a_clear_error():
    with pytest.raises(ValueError, match="lscpu -J printed invalid JSON"):
        p.parse_lscpu_json("lscpu: cannot open /proc/cpuinfo")


def test_meminfo():
    mem = p.parse_meminfo(fixture_text("procfs/6.18/meminfo-vm-24g.txt"))
    assert 20 * 2**20 < mem["MemTotal"] < 26 * 2**20


def test_dmidecode_altra_memory():
    records = p.parse_dmidecode(fixture_text("dmidecode/3.3/altra-memory.txt"))
    assert sum(1 for r in records if r["type"] == 17) == 14
    dimms = p.dimms_from_dmi(records)
    assert len(dimms) == 7  # empty slots ("No Module Installed") are skipped
    assert {d["size_gib"] for d in dimms} == {8.0}
    assert dimms[0] == {
        "locator": "DIMM 1", "size_gib": 8.0, "speed_mts": 3200, "configured_speed_mts": 3200, "type": "DDR4",
        "manufacturer": "Samsung", "part_number": "M393A1K43DB2-CWE", "serial": "0197198A",
    }


def test_dmidecode_altra_system_and_bios():
    records = p.parse_dmidecode(fixture_text("dmidecode/3.3/altra-system.txt"))
    bios = next(r for r in records if r["type"] == 0)
    assert "UEFI is supported" in bios["lists"]["Characteristics"]
    system = p.system_from_dmi(records)
    assert system["vendor"] == "WIWYNN" and system["board_product"] == "Mt.Jade Motherboard"
    assert system["bios_version"] == "1.07.20210713 (SCP: 1.07.20210713)"
    assert system["bios_date"] == "2021/07/13" and system["bios_vendor"] == "Ampere(R)"


def test_dmidecode_without_smbios_is_explained():
    base = "dmidecode/3.4/vm-no-smbios"
    why = p.dmidecode_error(fixture_text(f"{base}.stdout"), fixture_text(f"{base}.stderr"), int(fixture_text(f"{base}.rc")))
    assert why and "/dev/mem: No such file or directory" in why and "rc=1" in why
    assert p.dmidecode_error(fixture_text("dmidecode/3.3/altra-memory.txt"), "", 0) is None


def test_lsblk_vm_with_loops():
    disks = p.parse_lsblk(fixture_text("lsblk/2.38.1/vm-virtio-loops.json"))
    by = {d["name"]: d for d in disks}
    assert by["vda"]["transport"] == "virtio" and by["vda"]["size_bytes"] == 274877906944 and by["vda"]["rotational"]
    assert by["loop0"]["transport"] == "loop" and by["zram0"]["size_bytes"] == 0
    assert not any(d["removable"] for d in disks)


def test_lsblk_real_nvme_servers_with_paths():
    disks = {d["name"]: d for d in p.parse_lsblk(fixture_text("lsblk/unversioned/gpud-samsung-nvme-lvm-bmc-gadget-paths.json"))}
    pm1743 = disks["nvme0n1"]
    assert pm1743["path"] == "/dev/nvme0n1" and pm1743["transport"] == "nvme" and not pm1743["rotational"]
    assert (pm1743["model"], pm1743["serial"], pm1743["size_bytes"]) == ("SAMSUNG MZTL63T8HFLT-00AW7", "S7UTNG0Y512362", 3840755982336)
    assert disks["nvme4n1"]["size_bytes"] == 1920383410176
    gadget = disks["sda"]  # the BMC's virtual media: a "disk" of size 0
    assert gadget["model"] == "File-Stor Gadget" and gadget["size_bytes"] == 0
    assert {d["transport"] for n, d in disks.items() if n.startswith("loop")} == {"loop"}
    eight = [d for d in p.parse_lsblk(fixture_text("lsblk/unversioned/gpud-8x-nvme-paths-reindented.json")) if d["transport"] == "nvme"]
    assert len(eight) == 8 and sorted({d["size_bytes"] for d in eight}) == [960197124096, 7681501126656]
    assert sum(d["model"] == "INTEL SSDPF2KX076T1O" for d in eight) == 6 and all(d["wwn"].startswith("eui.") for d in eight)


def test_lsblk_string_booleans_of_old_util_linux():
    text = '{"blockdevices":[{"name":"sdc","kname":"sdc","type":"disk","size":"30752636928","model":"Ultra Fit       ","rota":"1","tran":"usb","rm":"1","hotplug":"1"}]}'
    (d,) = p.parse_lsblk(text)
    assert d == {**d, "model": "Ultra Fit", "size_bytes": 30752636928, "rotational": True, "transport": "usb", "removable": True, "path": "/dev/sdc"}


@pytest.mark.parametrize(
    ("rel", "model", "firmware"),
    [
        ("smartctl/7.1/nvme-intel-660p-pass.json", "INTEL SSDPEKNW010T8", "002C"),
        ("smartctl/unversioned/sas-seagate-st4000nm0043.json", "SEAGATE ST4000NM0043", "MS03"),
        ("smartctl/7.1/ata-hitachi-failing.json", "Hitachi HDS721050DLE630", "MS1OA650"),
    ],
)
def test_smartctl_identity(rel, model, firmware):
    ident = p.parse_smartctl_info(fixture_text(rel))
    assert ident["model"] == model and ident["firmware"] == firmware


def test_smartctl_identity_of_virtio_disk_is_an_error_not_a_crash():
    ident = p.parse_smartctl_info(fixture_text("smartctl/7.3/virtio-vda-i.json"))
    assert ident == {"error": "/dev/vda: Unable to detect device type"}


def test_ethtool_100g_link_down():
    eth = p.parse_ethtool(fixture_text("ethtool/6.1/mlxsw-swp1-100g-link-down.txt"))
    assert eth["speed_mbps"] is None and eth["link"] == "down" and eth["max_speed_mbps"] == 100000


def test_ethtool_veth_and_virtio():
    veth = p.parse_ethtool(fixture_text("ethtool/6.1/veth-link.txt"))
    assert veth["speed_mbps"] == 10000 and veth["link"] == "up" and veth["max_speed_mbps"] is None
    virtio = p.parse_ethtool(fixture_text("ethtool/6.1/virtio-eth0.txt"))
    assert virtio["speed_mbps"] is None and virtio["link"] == "up"


def test_ethtool_driver():
    drv = p.parse_ethtool_driver(fixture_text("ethtool/6.1/virtio-eth0-driver.txt"))
    assert drv == {"driver": "virtio_net", "driver_version": "1.0.0", "firmware": "", "pci_address": "0000:00:03.0"}


def test_ipmitool_mc_info_published():
    dell = p.parse_ipmitool_mc_info(fixture_text("ipmitool/unversioned/dell-mc-info.txt"))
    assert dell["firmware"] == "1.54" and dell["manufacturer"] == "DELL Inc" and dell["ipmi_version"] == "2.0"
    assert dell["aux_firmware"] == ["0x00", "0x0f", "0x00", "0x00"]
    hp = p.parse_ipmitool_mc_info(fixture_text("ipmitool/unversioned/hp-ilo2-mc-info.txt"))
    assert hp["firmware"] == "1.28" and hp["manufacturer"] == "Hewlett-Packard" and hp["aux_firmware"] == []


def test_ipmitool_without_bmc_raises_for_the_probe_to_report():
    with pytest.raises(ValueError, match="Firmware Revision"):
        p.parse_ipmitool_mc_info(fixture_text("ipmitool/1.8.19/no-bmc.stdout"))


@pytest.mark.parametrize(
    ("text", "gts"),
    [("16.0 GT/s PCIe", 16.0), ("2.5 GT/s", 2.5), ("8 GT/s", 8.0), ("Unknown", None), ("", None), (None, None)],
)
def test_pcie_link_speed(text, gts):
    assert p.parse_link_speed(text) == gts


@pytest.mark.parametrize(("text", "width"), [("16", 16), ("8", 8), ("0", None), ("255", None), (None, None)])
def test_pcie_link_width(text, width):
    assert p.parse_link_width(text) == width
