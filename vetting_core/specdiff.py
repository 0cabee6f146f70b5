"""The spec-diff engine: what a host is *supposed* to have vs what the probes found.

An operator writes the expected spec of a host in YAML (format and a complete example
in ``docs/spec.md``). :func:`parse_spec` validates it strictly — unknown keys and wrong
types are errors naming the field, because a typo such as ``dimm_cout`` silently
ignored would let a server with a missing DIMM pass. :func:`diff_spec` compares the
spec with an inventory document (:mod:`vetting_core.inventory`) and returns
:class:`~vetting_core.model.SpecDiff` records; a critical diff fails ``SpecValidate``
and the run ends with ``SpecMismatch``.

Severity policy (the same table is in ``docs/spec.md``):

- **critical** — something is missing, slower or different from what was ordered:
  fewer CPUs/cores/DIMMs/disks/NICs/GPUs, a different CPU or GPU model, memory outside
  its tolerance, a PCIe link narrower than expected, a NIC linked slower than
  expected, a firmware version not in the allowed list.
- **warning** — something is *more* than expected (a surprise disk, an extra GPU),
  slower-but-plausibly-by-design (a PCIe link below its maximum *speed* with no explicit
  expectation: GPUs drop to Gen1 when idle), or could not be checked because the
  inventory section is unavailable (no ``dmidecode`` permission, no BMC).
- **info** — noted for the report: removable/USB disks ignored, a section the spec
  does not constrain.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from fnmatch import fnmatchcase
from typing import Annotated, Any

import msgspec

from .inventory import Disk, Inventory, typed
from .model import Severity, SpecDiff, ThresholdRule
from .safeyaml import YamlError, load_yaml

MAX_SPEC_BYTES = 256 * 1024

Count = Annotated[int, msgspec.Meta(ge=0, le=100_000)]
Rate = Annotated[int, msgspec.Meta(ge=0, le=100_000_000)]  # Mb/s, MT/s
Positive = Annotated[float, msgspec.Meta(ge=0, le=1e12)]
Pct = Annotated[float, msgspec.Meta(ge=0, le=100)]
Text = Annotated[str, msgspec.Meta(max_length=512)]
VersionList = str | list[Text]


class SpecError(ValueError):
    """The expected spec is invalid; the message names the field (``$.memory.total_gib``)."""


class _Spec(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    pass


class CpuSpec(_Spec):
    model: Text | None = None  # glob or substring, case-insensitive
    sockets: Count | None = None
    cores: Count | None = None  # physical cores, all sockets
    threads: Count | None = None  # logical CPUs


class MemorySpec(_Spec):
    total_gib: Positive | None = None
    tolerance_pct: Pct = 1.0
    # MemTotal is below the installed size (firmware/kernel reservations); this wider
    # tolerance applies only when DIMM data (dmidecode) is unavailable.
    os_tolerance_pct: Pct = 5.0
    dimm_count: Count | None = None
    dimm_size_gib: Positive | None = None
    dimm_speed_mts: Rate | None = None  # minimum configured speed


class DiskSpec(_Spec):
    model: Text  # glob or substring, case-insensitive
    count: Count = 1
    size_gb: Positive | None = None  # decimal GB, as disks are sold
    size_tolerance_pct: Pct = 2.0
    transport: Text | None = None  # nvme, sata, sas
    # nominal per-disk performance, judged by the Storage stage (within_pct / gte)
    read_mbps: Positive | None = None
    write_mbps: Positive | None = None
    read_iops: Positive | None = None
    write_iops: Positive | None = None
    # ceilings of the 99th-percentile completion latency of the random 4 KiB jobs (µs)
    read_p99_us: Positive | None = None
    write_p99_us: Positive | None = None
    tolerance_pct: Pct = 20.0


class NicSpec(_Spec):
    count: Count = 1
    speed_mbps: Rate | None = None  # expected negotiated speed
    driver: Text | None = None
    name: Text | None = None  # interface-name glob (e.g. "ens*f*")
    link_required: bool = True


class GpuSpec(_Spec):
    model: Text
    count: Count = 1
    memory_gib: Positive | None = None
    memory_tolerance_pct: Pct = 5.0


class PcieSpec(_Spec):
    """``match`` is a glob on the PCI address (``0000:17:00.0``), ``vendor:device``
    (``10de:2330``) or the description. Without ``width``/``speed_gts`` each matched
    device is judged against its own maximum."""

    match: Text
    count: Count | None = None
    width: Count | None = None
    speed_gts: Positive | None = None


class _StrictRule(_Spec, kw_only=True):
    """ThresholdRule's fields, strictly: a typo in a per-host rule is an error too."""

    stage: Text = "*"
    kind: Text
    key: Text = "*"
    op: Text
    threshold: float | Text
    nominal: float = 0.0
    unit: Text = ""
    severity: Severity = Severity.critical
    source: Text = "host_override"
    id: int | None = None


class SpecIgnore(_Spec):
    """A known difference this host's operators accepted ("ignore for this host" in the
    web UI, or written here): a diff of ``field`` is kept but marked ``ignored`` and
    fails nothing. With ``actual`` only while the host shows that value: a DIMM away
    for repair is ignored, a second one failing is not."""

    field: Text
    actual: Text | None = None


class ExpectedSpec(_Spec):
    description: Text = ""
    cpu: CpuSpec | None = None
    memory: MemorySpec | None = None
    disks: list[DiskSpec] = []
    nics: list[NicSpec] = []
    gpus: list[GpuSpec] = []
    pcie: list[PcieSpec] = []
    # component -> allowed version(s), or component -> {identifier glob -> version(s)}
    firmware: dict[Text, VersionList | dict[Text, VersionList]] = {}
    params: dict[Text, dict[Text, Any]] = {}
    thresholds: list[ThresholdRule] = []
    ignore: list[SpecIgnore] = []


# -- parsing -----------------------------------------------------------------------

_TYPE_WORDS = {"float": "number", "int": "integer", "str": "string", "null": "null"}


def _friendly(exc: msgspec.ValidationError) -> str:
    text = str(exc)
    path = "$"
    if " - at `" in text:
        text, _, path = text.partition(" - at `")
        path = path.rstrip("`")
    text = text.replace("`", "")
    text = re.sub(r"\b(float|int|str|null)\b", lambda m: _TYPE_WORDS[m.group(1)], text)
    return f"{path}: {text}"


def spec_from_dict(data: Any) -> ExpectedSpec:
    """Validate an already-parsed spec (e.g. ``ctx.spec``) into an :class:`ExpectedSpec`."""
    if data is None:
        raise SpecError("$: the expected spec is empty")
    if not isinstance(data, Mapping):
        raise SpecError(f"$: Expected a mapping, got {type(data).__name__}")
    fw = data.get("firmware")
    if isinstance(fw, Mapping):
        for comp, want in fw.items():
            values = list(want.items()) if isinstance(want, Mapping) else [(None, want)]
            for ident, v in values:
                for item in v if isinstance(v, list) else [v]:
                    if isinstance(item, (int, float)) and not isinstance(item, bool):
                        where = f"$.firmware.{comp}" + (f"[{ident!r}]" if ident is not None else "")
                        raise SpecError(
                            f"{where}: versions must be quoted strings, got number {item!r} (YAML reads 2.10 as 2.1)"
                        )
    if isinstance(data.get("thresholds"), list):
        try:
            msgspec.convert(data["thresholds"], list[_StrictRule])
        except msgspec.ValidationError as exc:
            raise SpecError(_friendly(exc).replace("$", "$.thresholds", 1)) from None
    try:
        return msgspec.convert(dict(data), ExpectedSpec)
    except msgspec.ValidationError as exc:
        raise SpecError(_friendly(exc)) from None


def parse_spec(text: str | bytes) -> ExpectedSpec:
    """Parse expected-spec YAML. Raises :class:`SpecError` naming the field."""
    try:
        data = load_yaml(text, what="expected spec", max_bytes=MAX_SPEC_BYTES)
    except YamlError as exc:
        raise SpecError(str(exc)) from None
    return spec_from_dict(data)


def spec_to_dict(spec: ExpectedSpec) -> dict[str, Any]:
    """Plain builtins (defaults omitted) — what is stored and sent to the agent."""
    return msgspec.to_builtins(spec)


# -- diffing -----------------------------------------------------------------------


def _norm(s: str | None) -> str:
    return " ".join((s or "").split()).lower()


def matches(pattern: str, value: str | None) -> bool:
    """Case-insensitive glob when the pattern has wildcards, else substring."""
    p, v = _norm(pattern), _norm(value)
    if any(c in p for c in "*?["):
        return fnmatchcase(v, p)
    return p in v


def _fmt(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


class _Diffs:
    def __init__(self) -> None:
        self.items: list[SpecDiff] = []

    def add(self, field: str, expected: Any, actual: Any, severity: Severity, message: str) -> None:
        self.items.append(
            SpecDiff(
                field=field,
                expected=_fmt(expected),
                actual=_fmt(actual),
                severity=severity,
                message=message,
            )
        )

    def unavailable(self, field: str, inv: Inventory, section: str) -> bool:
        """Record a warning when the section could not be collected; True if so."""
        reason = inv.unavailable.get(section)
        if reason is not None:
            self.add(field, "checked", None, Severity.warning, f"cannot verify: {section} unavailable ({reason})")
            return True
        return False


def _count(d: _Diffs, field: str, what: str, expected: int, found: int) -> None:
    if found < expected:
        d.add(field, expected, found, Severity.critical, f"expected {expected} {what}, found {found}")
    elif found > expected:
        d.add(field, expected, found, Severity.warning, f"expected {expected} {what}, found {found} (more than ordered)")


def _diff_cpu(d: _Diffs, spec: CpuSpec, inv: Inventory) -> None:
    cpu = inv.cpu
    if cpu is None:
        if not d.unavailable("cpu", inv, "cpu"):
            d.add("cpu", "present", None, Severity.critical, "no CPU information in the inventory")
        return
    if spec.model and not matches(spec.model, cpu.model):
        d.add("cpu.model", spec.model, cpu.model, Severity.critical, "CPU model differs")
    for name, label in (("sockets", "sockets"), ("cores", "physical cores"), ("threads", "threads")):
        want = getattr(spec, name)
        if want is not None:
            _count(d, f"cpu.{name}", label, want, getattr(cpu, name))


def _within(actual: float, expected: float, pct: float) -> bool:
    return abs(actual - expected) <= abs(expected) * pct / 100.0


def _diff_memory(d: _Diffs, spec: MemorySpec, inv: Inventory) -> None:
    mem = inv.memory
    if mem is None:
        if not d.unavailable("memory", inv, "memory"):
            d.add("memory", "present", None, Severity.critical, "no memory information in the inventory")
        return
    have_dimms = bool(mem.dimms)
    if spec.total_gib is not None:
        actual = mem.total_gib if have_dimms else (mem.os_total_gib or mem.total_gib)
        pct = spec.tolerance_pct if have_dimms else spec.os_tolerance_pct
        source = "installed DIMMs" if have_dimms else "MemTotal (DIMM data unavailable)"
        if not _within(actual, spec.total_gib, pct):
            sev = Severity.critical if actual < spec.total_gib else Severity.warning
            d.add(
                "memory.total_gib",
                spec.total_gib,
                round(actual, 2),
                sev,
                f"memory {actual:.2f} GiB ({source}) is outside ±{pct:g} % of {spec.total_gib:g} GiB",
            )
    wants_dimms = spec.dimm_count is not None or spec.dimm_size_gib is not None or spec.dimm_speed_mts is not None
    if not wants_dimms:
        return
    if not have_dimms:
        if not d.unavailable("memory.dimms", inv, "memory.dimms"):
            reason = inv.unavailable.get("memory")
            d.add(
                "memory.dimms",
                spec.dimm_count,
                None,
                Severity.warning,
                "cannot verify DIMMs: no DIMM data in the inventory" + (f" ({reason})" if reason else ""),
            )
        return
    if spec.dimm_count is not None:
        _count(d, "memory.dimm_count", "populated DIMMs", spec.dimm_count, len(mem.dimms))
    for dimm in mem.dimms:
        where = f"memory.dimms[{dimm.locator}]"
        if spec.dimm_size_gib is not None and not _within(dimm.size_gib, spec.dimm_size_gib, 0.5):
            d.add(f"{where}.size_gib", spec.dimm_size_gib, dimm.size_gib, Severity.critical, f"DIMM {dimm.locator} has a different size")
        speed = dimm.configured_speed_mts or dimm.speed_mts
        if spec.dimm_speed_mts is not None and speed is not None and speed < spec.dimm_speed_mts:
            d.add(
                f"{where}.speed_mts",
                spec.dimm_speed_mts,
                speed,
                Severity.warning,
                f"DIMM {dimm.locator} runs at {speed} MT/s, below {spec.dimm_speed_mts}",
            )


def countable_disk(disk: Disk) -> bool:
    """Disks the spec is about: not removable/USB, not virtual block devices."""
    return not (disk.removable or disk.transport in ("usb", "loop") or disk.name.startswith(("loop", "zram", "ram", "sr", "dm-", "md")))


def disk_matches(spec: DiskSpec, disk: Disk) -> bool:
    if not matches(spec.model, disk.model):
        return False
    if spec.transport and _norm(spec.transport) != _norm(disk.transport):
        return False
    if spec.size_gb is not None and not _within(disk.size_bytes / 1e9, spec.size_gb, spec.size_tolerance_pct):
        return False
    return True


def _diff_disks(d: _Diffs, specs: list[DiskSpec], inv: Inventory) -> None:
    if "disks" in inv.unavailable and not inv.disks:
        d.unavailable("disks", inv, "disks")
        return
    disks = [x for x in inv.disks if countable_disk(x)]
    claimed: set[str] = set()
    for i, spec in enumerate(specs):
        found = [x for x in disks if x.path not in claimed and disk_matches(spec, x)]
        take = found[: spec.count]
        claimed.update(x.path for x in take)
        if len(found) < spec.count:
            near = [x for x in disks if x.path not in claimed and matches(spec.model, x.model)]
            hint = ""
            if near:
                hint = "; same model with other size/transport: " + ", ".join(
                    f"{x.name} {x.size_bytes / 1e9:.0f} GB {x.transport}" for x in near[:4]
                )
            d.add(
                f"disks[{i}].count",
                spec.count,
                len(found),
                Severity.critical,
                f"expected {spec.count} × {spec.model!r}, found {len(found)}{hint}",
            )
    for x in disks:
        if x.path not in claimed:
            d.add(f"disks[{x.name}]", None, f"{x.model} {x.size_bytes / 1e9:.0f} GB", Severity.warning, f"unexpected disk {x.path} ({x.model or 'no model'})")
    for x in inv.disks:
        if not countable_disk(x) and (x.removable or x.transport == "usb"):
            d.add(f"disks[{x.name}]", None, x.model, Severity.info, f"{x.path} is removable/USB: ignored")


def _diff_nics(d: _Diffs, specs: list[NicSpec], inv: Inventory) -> None:
    if "nics" in inv.unavailable and not inv.nics:
        d.unavailable("nics", inv, "nics")
        return
    nics = [n for n in inv.nics if not n.virtual]
    claimed: set[str] = set()
    for i, spec in enumerate(specs):
        cands = [
            n
            for n in nics
            if n.name not in claimed
            and (spec.driver is None or _norm(spec.driver) == _norm(n.driver))
            and (spec.name is None or fnmatchcase(n.name, spec.name))
            and (spec.speed_mbps is None or (n.max_speed_mbps or n.speed_mbps or 0) >= spec.speed_mbps or n.max_speed_mbps is None)
        ]
        take = cands[: spec.count]
        claimed.update(n.name for n in take)
        what = f"NICs{' with driver ' + spec.driver if spec.driver else ''}{' ' + str(spec.speed_mbps) + ' Mb/s' if spec.speed_mbps else ''}"
        if len(cands) < spec.count:
            d.add(f"nics[{i}].count", spec.count, len(cands), Severity.critical, f"expected {spec.count} {what}, found {len(cands)}")
        for n in take:
            if spec.speed_mbps is None:
                continue
            if n.speed_mbps is None:
                if spec.link_required:
                    d.add(f"nics[{n.name}].speed_mbps", spec.speed_mbps, None, Severity.critical, f"{n.name}: link {n.link or 'down'}, no speed negotiated")
            elif n.speed_mbps < spec.speed_mbps:
                d.add(f"nics[{n.name}].speed_mbps", spec.speed_mbps, n.speed_mbps, Severity.critical, f"{n.name} linked at {n.speed_mbps} Mb/s, expected {spec.speed_mbps}")


def _diff_gpus(d: _Diffs, specs: list[GpuSpec], inv: Inventory) -> None:
    if "gpus" in inv.unavailable and not inv.gpus:
        d.unavailable("gpus", inv, "gpus")
        if specs:
            want = sum(s.count for s in specs)
            d.add("gpus.count", want, 0, Severity.critical, f"expected {want} GPU(s); none could be enumerated ({inv.unavailable['gpus']})")
        return
    claimed: set[int] = set()
    for i, spec in enumerate(specs):
        found = [g for g in inv.gpus if g.index not in claimed and matches(spec.model, g.name)]
        claimed.update(g.index for g in found[: spec.count])
        _count(d, f"gpus[{i}].count", f"× {spec.model!r}", spec.count, len(found))
        if spec.memory_gib is not None:
            for g in found[: spec.count]:
                gib = g.memory_mib / 1024
                if not _within(gib, spec.memory_gib, spec.memory_tolerance_pct):
                    d.add(f"gpus[{g.index}].memory_gib", spec.memory_gib, round(gib, 2), Severity.critical, f"GPU {g.index} has {gib:.1f} GiB")
    for g in inv.gpus:
        if g.index not in claimed:
            d.add(f"gpus[{g.index}]", None, g.name, Severity.warning, f"unexpected GPU {g.index} ({g.name})")


def _pcie_match(pattern: str, dev: Any) -> bool:
    p = pattern.lower()
    ids = f"{dev.vendor_id}:{dev.device_id}".lower().replace("0x", "")
    return fnmatchcase(dev.address.lower(), p) or fnmatchcase(ids, p) or matches(pattern, dev.description)


def _diff_pcie(d: _Diffs, specs: list[PcieSpec], inv: Inventory) -> None:
    if "pci" in inv.unavailable and not inv.pci:
        d.unavailable("pcie", inv, "pci")
        return
    for i, spec in enumerate(specs):
        devs = [p for p in inv.pci if _pcie_match(spec.match, p)]
        if spec.count is not None:
            _count(d, f"pcie[{i}].count", f"PCIe devices matching {spec.match!r}", spec.count, len(devs))
        elif not devs:
            d.add(f"pcie[{i}]", spec.match, None, Severity.critical, f"no PCIe device matches {spec.match!r}")
        for p in devs:
            f = f"pcie[{p.address}]"
            want_w = spec.width if spec.width is not None else p.max_width
            if want_w is not None and p.current_width is not None and p.current_width < want_w:
                d.add(f"{f}.width", f"x{want_w}", f"x{p.current_width}", Severity.critical, f"{p.address} ({p.description or spec.match}) link x{p.current_width}, expected x{want_w}")
            elif spec.width is not None and p.current_width is None:
                d.add(f"{f}.width", f"x{spec.width}", None, Severity.warning, f"{p.address}: link width not reported")
            if spec.speed_gts is not None:
                if p.current_speed_gts is not None and p.current_speed_gts < spec.speed_gts:
                    d.add(f"{f}.speed_gts", spec.speed_gts, p.current_speed_gts, Severity.critical, f"{p.address} link {p.current_speed_gts:g} GT/s, expected {spec.speed_gts:g}")
            elif p.max_speed_gts and p.current_speed_gts is not None and p.current_speed_gts < p.max_speed_gts:
                d.add(f"{f}.speed_gts", p.max_speed_gts, p.current_speed_gts, Severity.warning, f"{p.address} link {p.current_speed_gts:g} GT/s below its maximum {p.max_speed_gts:g} (idle power saving?)")


FirmwareObservation = tuple[str, str, str]  # (component, identifier, version)


def firmware_from_inventory(inv: Inventory) -> list[FirmwareObservation]:
    """The firmware versions an inventory document reveals, as (component, id, version)."""
    out: list[FirmwareObservation] = []
    if inv.system and inv.system.bios_version:
        out.append(("bios", inv.system.board_product or "system", inv.system.bios_version))
    if inv.bmc and inv.bmc.firmware:
        out.append(("bmc", inv.bmc.manufacturer or "bmc", inv.bmc.firmware))
    if inv.cpu and inv.cpu.microcode:
        out.append(("microcode", inv.cpu.model or "cpu", inv.cpu.microcode))
    for n in inv.nics:
        if n.firmware and not n.virtual:
            out.append(("nic", f"{n.name} {n.driver}".strip(), n.firmware))
    for x in inv.disks:
        if x.firmware:
            comp = "nvme_fw" if x.transport == "nvme" or x.name.startswith("nvme") else "disk_fw"
            out.append((comp, f"{x.name} {x.model}".strip(), x.firmware))
    for g in inv.gpus:
        if g.vbios:
            out.append(("gpu_vbios", f"{g.index} {g.name}".strip(), g.vbios))
    return out


def _allowed(v: VersionList) -> list[str]:
    return [v] if isinstance(v, str) else list(v)


def diff_firmware(
    expected: Mapping[str, VersionList | Mapping[str, VersionList]],
    observed: Iterable[FirmwareObservation],
    unavailable: Mapping[str, str] | None = None,
) -> list[SpecDiff]:
    """Compare the spec's ``firmware`` section with observed versions.

    A plain value applies to every observation of the component; a mapping applies
    each ``identifier glob → version(s)`` to the observations whose identifier matches.
    A version not in the allowed list is critical; a component the spec names but
    nothing reported is a warning (cannot verify)."""
    d = _Diffs()
    obs = list(observed)
    unavailable = unavailable or {}
    for comp, want in expected.items():
        mine = [o for o in obs if o[0] == comp]
        if not mine:
            why = unavailable.get(comp) or unavailable.get(_SECTION_OF.get(comp, comp))
            d.add(f"firmware.{comp}", ", ".join(_flatten(want)), None, Severity.warning, f"cannot verify {comp} firmware: not reported" + (f" ({why})" if why else ""))
            continue
        rules: list[tuple[str | None, list[str]]]
        if isinstance(want, Mapping):
            rules = [(k, _allowed(v)) for k, v in want.items()]
        else:
            rules = [(None, _allowed(want))]
        for pattern, allowed in rules:
            hits = [o for o in mine if pattern is None or matches(pattern, o[1])]
            field = f"firmware.{comp}" + (f"[{pattern}]" if pattern else "")
            if not hits:
                d.add(field, ", ".join(allowed), None, Severity.warning, f"no {comp} matching {pattern!r} reported")
            for _, ident, version in hits:
                if version.strip() not in [a.strip() for a in allowed]:
                    d.add(field, " or ".join(allowed), version, Severity.critical, f"{comp} {ident}: firmware {version}, expected {' or '.join(allowed)}")
    return d.items


_SECTION_OF = {"bios": "system.dmi", "bmc": "bmc", "microcode": "cpu", "nic": "nics", "nvme_fw": "disks", "disk_fw": "disks", "gpu_vbios": "gpus"}


def _flatten(want: Any) -> list[str]:
    if isinstance(want, Mapping):
        return [f"{k}={'/'.join(_allowed(v))}" for k, v in want.items()]
    return _allowed(want)


def diff_spec(spec: ExpectedSpec, inventory_doc: Mapping[str, Any]) -> list[SpecDiff]:
    """All differences between ``spec`` and an inventory document, critical first."""
    try:
        inv = typed(dict(inventory_doc))
    except msgspec.ValidationError as exc:
        raise ValueError(f"invalid inventory document: {exc}") from None
    d = _Diffs()
    if spec.cpu:
        _diff_cpu(d, spec.cpu, inv)
    if spec.memory:
        _diff_memory(d, spec.memory, inv)
    if spec.disks:
        _diff_disks(d, spec.disks, inv)
    if spec.nics:
        _diff_nics(d, spec.nics, inv)
    if spec.gpus:
        _diff_gpus(d, spec.gpus, inv)
    if spec.pcie:
        _diff_pcie(d, spec.pcie, inv)
    if spec.firmware:
        d.items.extend(diff_firmware(spec.firmware, firmware_from_inventory(inv), inv.unavailable))
    for x in d.items:
        x.ignored = any(i.field == x.field and i.actual in (None, x.actual) for i in spec.ignore)
    order = {Severity.critical: 0, Severity.warning: 1, Severity.info: 2}
    return sorted(d.items, key=lambda x: order[x.severity])


def critical(diffs: Iterable[SpecDiff]) -> list[SpecDiff]:
    return [x for x in diffs if x.severity is Severity.critical and not x.ignored]


def nominal_for_disk(spec: ExpectedSpec | None, disk: Disk) -> DiskSpec | None:
    """The spec entry a disk matches (Storage uses it for nominal MB/s and IOPS)."""
    if spec is None:
        return None
    for entry in spec.disks:
        if disk_matches(entry, disk):
            return entry
    return None
