"""Pure parsers of ``smartctl --json`` (ATA/SATA, SAS/SCSI, NVMe; direct or behind a
RAID controller) and of ``smartctl --scan-open --json``.

The verdict combines ``smart_status.passed`` with smartctl's exit-status bits
(``man smartctl``, "RETURN VALUES"); a zero exit code alone proves nothing and a
non-zero one is not always a failure:

=====  =======================================================  ===============
bit    meaning                                                  verdict
=====  =======================================================  ===============
0      command line did not parse — or, with no ``device`` in   error / **skip**
       the JSON, "Unable to detect device type" (virtio, USB)
1      device open failed / did not identify (no SMART here)    **skip**
2      some SMART or ATA command failed, or checksum error      warning [#]_
3      SMART status check returned "DISK FAILING"               **fail**
4      prefail attributes at or below threshold now             **fail**
5      usage/prefail attributes below threshold in the past     warning
6      the device error log contains errors                     warning
7      the self-test log contains errors (not outdated)         **fail**
=====  =======================================================  ===============

.. [#] Behind a MegaRAID controller the SMART RETURN STATUS command does not pass
   through: smartctl judges the attributes instead, says "This result is based on
   an Attribute check" and sets bit 2. That is how every healthy RAID-attached ATA
   drive answers, so it is a note, not a warning.

Counters are numbers keyed by a stable name (``counters``); the absolute health of
the drive and the change during a stage are judged on them by threshold rules
(:mod:`vetting_stages.smart.health`). ATA raw values are decoded per attribute from
``raw.string`` (:func:`decode_raw`), never taken from the packed ``raw.value``.
"""

from __future__ import annotations

import re
from typing import Any

from .._common import loads_json

FAIL_BITS = {3: "SMART status: DISK FAILING", 4: "prefail attribute at or below threshold", 7: "self-test log contains errors"}
WARN_BITS = {2: "a SMART command failed or returned a checksum error", 5: "an attribute was below threshold in the past", 6: "device error log contains errors"}
ATTRIBUTE_CHECK = "based on an Attribute check"

# ATA attributes recorded as counters (id → stable key; vendors rename some of them,
# e.g. Samsung's 187 "Uncorrectable_Error_Cnt" and 199 "CRC_Error_Count")
ATA_COUNTERS = {
    5: "Reallocated_Sector_Ct",
    187: "Reported_Uncorrect",
    188: "Command_Timeout",
    196: "Reallocated_Event_Count",
    197: "Current_Pending_Sector",
    198: "Offline_Uncorrectable",
    199: "UDMA_CRC_Error_Count",
}
# SSD wear attributes whose *normalized* value is the life left in percent (100 → 0),
# by the name smartctl's drive database gives them
ATA_LIFE_LEFT = ("Wear_Leveling_Count", "SSD_Life_Left", "Media_Wearout_Indicator", "Percent_Lifetime_Remain",
                 "Remaining_Lifetime_Perc", "Percent_Life_Remaining")
# SSD spare-block attributes whose normalized value falls towards the vendor's threshold
ATA_SPARE = ("Available_Reservd_Space", "Unused_Rsvd_Blk_Cnt_Tot", "Used_Rsvd_Blk_Cnt_Tot", "Reserve_Block_Count")
NVME_COUNTERS = ("media_errors", "num_err_log_entries", "percentage_used", "available_spare", "unsafe_shutdowns")
# NVMe SMART/Health log byte 0, bit by bit (NVMe base specification, "Critical Warning")
CRITICAL_WARNING_BITS = {
    0: "available_spare_low",
    1: "temperature",
    2: "reliability_degraded",
    3: "read_only",
    4: "volatile_backup_failed",
    5: "persistent_memory_read_only",
}


def exit_bits(status: int | None) -> list[int]:
    return [b for b in range(8) if status is not None and status & (1 << b)]


def decode_raw(attr: dict[str, Any]) -> int | str | None:
    """An ATA attribute's raw count, decoded from what smartctl printed.

    ``raw.value`` is the 48-bit field as stored, which packs several numbers for many
    vendors (``25 (Min/Max 20/30)`` is 504627225, Seagate's Command_Timeout ``0 0 4``
    is three 16-bit counters). What smartctl printed is decoded instead:

    - ``"123"`` → 123;
    - ``"36 (Min/Max 0/48)"``, ``"2111 (12437 0)"``, ``"44299h+04m+54.612s"`` → the
      leading number (the count; the rest is vendor detail);
    - ``"0 0 4"`` (three 16-bit words, as smartctl prints ``raw16``) → the largest word:
      for Command_Timeout the words are the total and the subsets over 5 s and 7.5 s,
      so the largest is the total;
    - anything else → the string as smartctl printed it (never a packed number).
    """
    raw = attr.get("raw") or {}
    text = str(raw.get("string", "")).strip()
    if not text:
        value = raw.get("value")
        return value if isinstance(value, int) else None
    if re.fullmatch(r"\d+(\s+\d+){1,3}", text):
        return max(int(w) for w in text.split())
    m = re.match(r"(\d+)(?:$|\s*\(|h\+)", text)
    if m:
        return int(m.group(1))
    return text


def identity(doc: dict[str, Any]) -> dict[str, str]:
    """Model, serial and firmware from the fields each smartctl version uses: ATA and
    NVMe ``model_name``/``firmware_version``; SCSI ``model_name``/``product`` and
    ``revision`` before 7.3, ``scsi_model_name``/``scsi_product``/``scsi_revision`` from 7.3 on."""
    model = doc.get("model_name") or doc.get("scsi_model_name") or ""
    if not model:
        vendor = doc.get("scsi_vendor") or doc.get("vendor") or ""
        product = doc.get("scsi_product") or doc.get("product") or ""
        model = " ".join(x for x in (vendor, product) if x)
    firmware = doc.get("firmware_version") or doc.get("scsi_revision") or doc.get("revision") or ""
    return {"model": str(model).strip(), "serial": str(doc.get("serial_number", "")), "firmware": str(firmware)}


def _ata_counters(doc: dict[str, Any], report: dict[str, Any]) -> None:
    counters, raw = report["counters"], report["raw"]
    life_left: list[int] = []
    spare_margin: list[int] = []
    for attr in (doc.get("ata_smart_attributes") or {}).get("table", []):
        name, value, thresh = attr.get("name", ""), attr.get("value"), attr.get("thresh")
        decoded = decode_raw(attr)
        raw[f"{attr.get('id')} {name}"] = decoded
        key = ATA_COUNTERS.get(attr.get("id"))
        if key and isinstance(decoded, int):
            counters[key] = decoded
        if name in ATA_LIFE_LEFT and isinstance(value, int) and 0 <= value <= 100:
            life_left.append(value)
        if name in ATA_SPARE and isinstance(value, int) and isinstance(thresh, int) and thresh > 0:
            spare_margin.append(value - thresh)
        if attr.get("when_failed") == "now":
            report["reasons"].append(
                f"attribute {attr.get('id')} {name} failed now (value {value} ≤ thresh {thresh})"
            )
    used = _device_statistic(doc, "Percentage Used Endurance Indicator")
    if used is not None:
        counters["percentage_used"] = used
    elif life_left:
        counters["percentage_used"] = 100 - min(life_left)
    if spare_margin:
        counters["available_spare_margin"] = min(spare_margin)
    log = doc.get("ata_smart_error_log") or {}
    count = (log.get("extended") or log.get("summary") or {}).get("count")
    if isinstance(count, int):
        counters["ata_error_log_count"] = count


def _device_statistic(doc: dict[str, Any], name: str) -> int | None:
    for page in (doc.get("ata_device_statistics") or {}).get("pages", []):
        for entry in page.get("table", []):
            if entry.get("name") == name and isinstance(entry.get("value"), int):
                return entry["value"]
    return None


def _nvme_counters(nvme: dict[str, Any], counters: dict[str, float]) -> None:
    for key in NVME_COUNTERS:
        if isinstance(nvme.get(key), (int, float)):
            counters[key] = nvme[key]
    spare, threshold = nvme.get("available_spare"), nvme.get("available_spare_threshold")
    if isinstance(spare, int) and isinstance(threshold, int):
        counters["available_spare_margin"] = spare - threshold
    warning = nvme.get("critical_warning")
    if isinstance(warning, int):
        for bit, name in CRITICAL_WARNING_BITS.items():
            counters[f"critical_warning_{name}"] = (warning >> bit) & 1


def _scsi_counters(doc: dict[str, Any], counters: dict[str, float]) -> None:
    if isinstance(doc.get("scsi_grown_defect_list"), int):
        counters["scsi_grown_defect_list"] = doc["scsi_grown_defect_list"]
    for direction in ("read", "write", "verify"):
        log = (doc.get("scsi_error_counter_log") or {}).get(direction) or {}
        if isinstance(log.get("total_uncorrected_errors"), int):
            counters[f"scsi_uncorrected_{direction}"] = log["total_uncorrected_errors"]
    pending = (doc.get("scsi_pending_defects") or {}).get("count")
    if isinstance(pending, int):
        counters["scsi_pending_defects"] = pending
    used = doc.get("scsi_percentage_used_endurance_indicator")
    if isinstance(used, int):
        counters["percentage_used"] = used


def parse_smart(text: str) -> dict[str, Any]:
    """``smartctl --json -x DEV`` → report dict:

    ``protocol``, ``device_type`` (smartctl's ``-d`` type), ``model``, ``serial``,
    ``firmware``, ``passed`` (``smart_status`` or None when not reported),
    ``exit_status``, ``counters`` (name → number), ``raw`` (every ATA attribute,
    decoded or as printed), ``verdict`` (``passed``/``failed``/``skipped``/``error``),
    ``reasons`` (why failed or skipped), ``warnings``, ``notes``, ``self_test``
    (see :func:`self_test_state`). Absolute health (pending sectors, grown defects...)
    is judged by threshold rules on ``counters``, not here.
    """
    doc = loads_json(text, "smartctl --json")
    sc = doc.get("smartctl") or {}
    status = sc.get("exit_status")
    messages = [m.get("string", "") for m in sc.get("messages", []) if m.get("string")]
    bits = exit_bits(status)
    device = doc.get("device") or {}
    report: dict[str, Any] = {
        "protocol": device.get("protocol", ""),
        "device_type": device.get("type", ""),
        **identity(doc),
        "passed": (doc.get("smart_status") or {}).get("passed"),
        "exit_status": status,
        "exit_bits": bits,
        "messages": messages,
        "counters": {},
        "raw": {},
        "temperature_c": (doc.get("temperature") or {}).get("current"),
        "power_on_hours": (doc.get("power_on_time") or {}).get("hours"),
        "reasons": [],
        "warnings": [],
        "notes": [],
        "self_test": self_test_state(doc),
    }
    if 0 in bits and device:
        report.update(verdict="error", reasons=["smartctl rejected its command line: " + "; ".join(messages)])
        return report
    if 0 in bits or 1 in bits or not device:
        # bit 0 without a "device" object: smartctl could not even tell the device
        # type ("Unable to detect device type": virtio, unknown USB bridge)
        report.update(verdict="skipped", reasons=["; ".join(messages) or "device could not be opened or has no SMART"])
        return report
    if (doc.get("smart_support") or {}).get("available") is False:
        report.update(verdict="skipped", reasons=["device has no SMART support"])
        return report

    _ata_counters(doc, report)
    nvme = doc.get("nvme_smart_health_information_log") or {}
    _nvme_counters(nvme, report["counters"])
    _scsi_counters(doc, report["counters"])

    if report["passed"] is False:
        report["reasons"].insert(0, "SMART overall-health self-assessment: FAILED")
    for bit in bits:
        if bit in FAIL_BITS:
            report["reasons"].append(f"exit bit {bit}: {FAIL_BITS[bit]}")
        elif bit == 2 and any(ATTRIBUTE_CHECK in m for m in messages):
            report["notes"].append("the controller does not pass SMART RETURN STATUS through: "
                                   "smartctl judged the attributes instead (exit bit 2)")
        elif bit in WARN_BITS:
            report["warnings"].append(f"exit bit {bit}: {WARN_BITS[bit]}")
    if report["self_test"].get("last_passed") is False:
        report["warnings"].append(f"last self-test: {report['self_test'].get('last_status')}")
    report["verdict"] = "failed" if report["reasons"] else "passed"
    return report


# -- self-tests, per protocol ---------------------------------------------------------

# what the newest log entry says, per protocol → "passed" / "aborted" / "failed" / "running"
_ATA_STATUS = {0: "passed", 1: "aborted", 2: "aborted", 15: "running"}  # high nibble; 3-8 failed
_NVME_RESULT = {0: "passed", 1: "aborted", 2: "aborted", 3: "aborted", 4: "aborted", 8: "aborted", 9: "aborted", 15: "unused"}
_SCSI_RESULT = {0: "passed", 1: "aborted", 2: "aborted", 15: "running"}  # 3-7 failed


def self_test_state(doc: dict[str, Any]) -> dict[str, Any]:
    """Progress and newest result of the device self-test, ATA, NVMe or SCSI/SAS.

    ``running`` (and ``remaining_percent``) while a test runs; ``outcome`` of the newest
    log entry: ``passed``, ``aborted`` (by the host, a reset, a format...: not a verdict
    on the drive), ``failed``; ``last_status`` in smartctl's words; ``newest``
    identifies that entry (a self-test that was asked for but never ran leaves it
    unchanged); ``supported`` is False where the drive says it has no self-test.

    ATA: ``ata_smart_data.self_test.status.value`` has 0xF in its high nibble while a
    test runs; the log is ``ata_smart_self_test_log.standard`` (``-a``) or
    ``.extended`` (``-x``). NVMe: ``nvme_self_test_log.current_self_test_operation``.
    SCSI: ``scsi_self_test_0`` (newest) .. ``scsi_self_test_19``, result 15 = running.
    """
    out: dict[str, Any] = {"running": False}
    ata = (doc.get("ata_smart_data") or {}).get("self_test") or {}
    if ata:
        st = ata.get("status") or {}
        value = st.get("value", 0) or 0
        out["running"] = (value >> 4) == 0xF
        if out["running"]:
            out["remaining_percent"] = st.get("remaining_percent", (value & 0xF) * 10)
        out["polling_minutes"] = ata.get("polling_minutes") or {}
    caps = (doc.get("ata_smart_data") or {}).get("capabilities") or {}
    if caps.get("self_tests_supported") is False:
        out["supported"] = False
    log = doc.get("ata_smart_self_test_log") or {}
    for kind in ("extended", "standard"):
        table = (log.get(kind) or {}).get("table") or []
        if table:
            last = table[0]
            status = last.get("status") or {}
            out["last_status"] = status.get("string", "")
            out["outcome"] = _ATA_STATUS.get((status.get("value", 0) or 0) >> 4, "failed")
            out["last_type"] = (last.get("type") or {}).get("string", "")
            out["failed_entries"] = sum(1 for e in table if _ATA_STATUS.get(((e.get("status") or {}).get("value", 0) or 0) >> 4, "failed") == "failed")
            out["newest"] = [(log.get(kind) or {}).get("count", len(table)), last.get("lifetime_hours"), out["last_type"], out["last_status"]]
            break
    nv = doc.get("nvme_self_test_log")
    if isinstance(nv, dict):
        op = (nv.get("current_self_test_operation") or {}).get("value", 0)
        out["running"] = bool(op)
        if op:
            out["remaining_percent"] = 100 - (nv.get("current_self_test_completion_percent") or 0)
        table = nv.get("table") or []
        if table:
            res = table[0].get("self_test_result") or {}
            out["last_status"] = res.get("string", "")
            out["outcome"] = _NVME_RESULT.get(res.get("value"), "failed")
            out["newest"] = [len(table), table[0].get("power_on_hours"), out["last_status"]]
    scsi = [doc[k] for k in sorted((k for k in doc if re.fullmatch(r"scsi_self_test_\d+", k)), key=lambda k: int(k.rsplit("_", 1)[1]))]
    if scsi:
        last = scsi[0]
        res = last.get("result") or {}
        outcome = _SCSI_RESULT.get(res.get("value"), "failed")
        out["running"] = outcome == "running"
        out["last_status"] = res.get("string", "")
        out["last_type"] = (last.get("code") or {}).get("string", "")
        if not out["running"]:
            out["outcome"] = outcome
        out["failed_entries"] = sum(1 for e in scsi if _SCSI_RESULT.get((e.get("result") or {}).get("value"), "failed") == "failed")
        out["newest"] = [len(scsi), (last.get("power_on_time") or {}).get("hours"), out["last_type"], out["last_status"]]
    if "outcome" in out:
        out["last_passed"] = {"passed": True, "failed": False}.get(out["outcome"])
    return out


# -- smartctl --scan-open -------------------------------------------------------------

# -d types that address a physical disk behind a RAID controller (smartctl(8), -d)
CONTROLLER_TYPES = ("megaraid", "cciss", "aacraid", "areca", "3ware", "hpt", "sssraid", "jmb39x", "highpoint")


def parse_scan(text: str) -> list[dict[str, str]]:
    """``smartctl --scan-open --json`` → ``[{name, type, protocol, info_name, controller}]``,
    ``controller`` naming the RAID controller family for disks behind one ("" else)."""
    doc = loads_json(text, "smartctl --scan-open --json")
    out = []
    for dev in doc.get("devices") or []:
        dtype = str(dev.get("type") or "")
        family = next((c for c in CONTROLLER_TYPES if c in dtype.split("+")[-1]), "")
        out.append({
            "name": str(dev.get("name") or ""),
            "type": dtype,
            "protocol": str(dev.get("protocol") or ""),
            "info_name": str(dev.get("info_name") or ""),
            "controller": family,
        })
    return out
