"""Pure parser of ``smartctl --json -x`` (ATA/SATA, SAS/SCSI, NVMe).

The verdict combines ``smart_status.passed`` with smartctl's exit-status bits
(``man smartctl``, "RETURN VALUES"); a zero exit code alone proves nothing and a
non-zero one is not always a failure:

=====  =======================================================  ===============
bit    meaning                                                  verdict
=====  =======================================================  ===============
0      command line did not parse — or, with no ``device`` in   error / **skip**
       the JSON, "Unable to detect device type" (virtio, USB)
1      device open failed / did not identify (no SMART here)    **skip**
2      some SMART or ATA command failed, or checksum error      warning
3      SMART status check returned "DISK FAILING"               **fail**
4      prefail attributes at or below threshold now             **fail**
5      usage/prefail attributes below threshold in the past     warning
6      the device error log contains errors                     warning
7      the self-test log contains errors (not outdated)         **fail**
=====  =======================================================  ===============
"""

from __future__ import annotations

import re
from typing import Any

from .._common import loads_json

FAIL_BITS = {3: "SMART status: DISK FAILING", 4: "prefail attribute at or below threshold", 7: "self-test log contains errors"}
WARN_BITS = {2: "a SMART command failed or returned a checksum error", 5: "an attribute was below threshold in the past", 6: "device error log contains errors"}

# ATA attributes whose raw counts are judged as deltas (id → stable key)
ATA_COUNTERS = {
    5: "Reallocated_Sector_Ct",
    187: "Reported_Uncorrect",
    188: "Command_Timeout",
    196: "Reallocated_Event_Count",
    197: "Current_Pending_Sector",
    198: "Offline_Uncorrectable",
    199: "UDMA_CRC_Error_Count",
}
NVME_COUNTERS = (
    "critical_warning",
    "media_errors",
    "num_err_log_entries",
    "percentage_used",
    "available_spare",
    "unsafe_shutdowns",
)


def _raw_count(attr: dict[str, Any]) -> int | None:
    """The count of an ATA attribute. ``raw.value`` packs several fields for some
    vendors (``2111 (12437 0)``), so the leading number of ``raw.string`` is used."""
    raw = attr.get("raw") or {}
    m = re.match(r"\s*(\d+)", str(raw.get("string", "")))
    if m:
        return int(m.group(1))
    v = raw.get("value")
    return int(v) if isinstance(v, int) else None


def exit_bits(status: int | None) -> list[int]:
    return [b for b in range(8) if status is not None and status & (1 << b)]


def parse_smart(text: str) -> dict[str, Any]:
    """``smartctl --json -x DEV`` → report dict:

    ``protocol``, ``model``, ``serial``, ``firmware``, ``passed`` (``smart_status``
    or None when not reported), ``exit_status``, ``counters`` (name → number),
    ``verdict`` (``passed``/``failed``/``skipped``), ``reasons`` (why failed or
    skipped), ``warnings``, ``self_test`` (see :func:`self_test_state`).
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
        "model": doc.get("model_name") or doc.get("product") or "",
        "serial": doc.get("serial_number", ""),
        "firmware": doc.get("firmware_version") or doc.get("revision") or "",
        "passed": (doc.get("smart_status") or {}).get("passed"),
        "exit_status": status,
        "exit_bits": bits,
        "messages": messages,
        "counters": {},
        "temperature_c": (doc.get("temperature") or {}).get("current"),
        "power_on_hours": (doc.get("power_on_time") or {}).get("hours"),
        "reasons": [],
        "warnings": [],
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
    support = doc.get("smart_support") or {}
    if support.get("available") is False:
        report.update(verdict="skipped", reasons=["device has no SMART support"])
        return report

    counters: dict[str, float] = report["counters"]
    for attr in (doc.get("ata_smart_attributes") or {}).get("table", []):
        name = ATA_COUNTERS.get(attr.get("id"))
        if name:
            count = _raw_count(attr)
            if count is not None:
                counters[name] = count
        if attr.get("when_failed") == "now":
            report["reasons"].append(
                f"attribute {attr.get('id')} {attr.get('name')} failed now (value {attr.get('value')} ≤ thresh {attr.get('thresh')})"
            )
    nvme = doc.get("nvme_smart_health_information_log") or {}
    for key in NVME_COUNTERS:
        if isinstance(nvme.get(key), (int, float)):
            counters[key] = nvme[key]
    if "scsi_grown_defect_list" in doc:
        counters["scsi_grown_defect_list"] = doc["scsi_grown_defect_list"]
    for direction in ("read", "write", "verify"):
        log = (doc.get("scsi_error_counter_log") or {}).get(direction) or {}
        if isinstance(log.get("total_uncorrected_errors"), int):
            counters[f"scsi_uncorrected_{direction}"] = log["total_uncorrected_errors"]

    if report["passed"] is False:
        report["reasons"].insert(0, "SMART overall-health self-assessment: FAILED")
    for bit in bits:
        if bit in FAIL_BITS and FAIL_BITS[bit] not in report["reasons"]:
            report["reasons"].append(f"exit bit {bit}: {FAIL_BITS[bit]}")
        elif bit in WARN_BITS:
            report["warnings"].append(f"exit bit {bit}: {WARN_BITS[bit]}")
    if nvme.get("critical_warning"):
        report["reasons"].append(f"NVMe critical_warning = {nvme['critical_warning']:#x}")
    if nvme.get("media_errors"):
        report["warnings"].append(f"NVMe reports {nvme['media_errors']} media errors (judged as a delta)")
    for name in ("Reallocated_Sector_Ct", "Current_Pending_Sector", "Offline_Uncorrectable"):
        if counters.get(name):
            report["warnings"].append(f"{name} = {counters[name]:g} (judged as a delta)")
    if report["self_test"].get("last_passed") is False:
        report["warnings"].append(f"last self-test: {report['self_test'].get('last_status')}")
    report["verdict"] = "failed" if report["reasons"] else "passed"
    return report


def self_test_state(doc: dict[str, Any]) -> dict[str, Any]:
    """Progress and last result of the device self-test, ATA or NVMe.

    ATA: ``ata_smart_data.self_test.status.value`` has 0xF in its high nibble while a
    test runs (low nibble = tenths remaining). NVMe: ``nvme_self_test_log``'s
    ``current_self_test_operation`` is non-zero while running. ``newest`` identifies
    the newest log entry (count, power-on hours, type, status): a self-test that was
    asked for but never ran leaves it unchanged."""
    out: dict[str, Any] = {"running": False}
    ata = ((doc.get("ata_smart_data") or {}).get("self_test") or {})
    if ata:
        st = ata.get("status") or {}
        value = st.get("value", 0) or 0
        out["running"] = (value >> 4) == 0xF
        if out["running"]:
            out["remaining_percent"] = st.get("remaining_percent", (value & 0xF) * 10)
        out["polling_minutes"] = ata.get("polling_minutes") or {}
    log = ((doc.get("ata_smart_self_test_log") or {}).get("standard") or {}).get("table") or []
    if log:
        last = log[0]
        out["last_status"] = (last.get("status") or {}).get("string", "")
        out["last_passed"] = (last.get("status") or {}).get("passed")
        out["last_type"] = (last.get("type") or {}).get("string", "")
        out["failed_entries"] = sum(1 for e in log if (e.get("status") or {}).get("passed") is False)
        count = ((doc.get("ata_smart_self_test_log") or {}).get("standard") or {}).get("count", len(log))
        out["newest"] = [count, last.get("lifetime_hours"), out["last_type"], out["last_status"]]
    nv = doc.get("nvme_self_test_log") or {}
    if nv:
        op = (nv.get("current_self_test_operation") or {}).get("value", 0)
        out["running"] = bool(op)
        if op:
            out["remaining_percent"] = 100 - (nv.get("current_self_test_completion_percent") or 0)
        table = nv.get("table") or []
        if table:
            res = (table[0].get("self_test_result") or {})
            out["last_status"] = res.get("string", "")
            out["last_passed"] = res.get("value") == 0
            out["newest"] = [len(table), table[0].get("power_on_hours"), out["last_status"]]
    return out
