"""What a drive must look like to go back into production: the SMART threshold rules.

Two kinds of rule judge the same ``smart_attr`` samples (``<disk>/<counter>``):

- **absolute health**, judged on every reading, the first one taken when the stage
  starts included: a drive that *arrives* with pending sectors or a grown defect list
  fails even if nothing changes while it is tested;
- **deltas** (``delta_lte``): a counter that grows during the stage fails it, whatever
  its starting value. The Storage stage judges the same deltas around its disk work.

The defaults, and why a storage engineer signs them (docs/profiles.md repeats this):

=============================  ===========================  =====================================================
counter                        default                      why
=============================  ===========================  =====================================================
Current_Pending_Sector         fail if > 0                  sectors the drive could not read and has not yet
                                                            remapped: data is unreadable now
Offline_Uncorrectable          fail if > 0                  the offline scan found sectors it cannot correct
Reported_Uncorrect             fail if > 0                  the drive returned errors ECC could not correct to
                                                            the host: data was lost
Reallocated_Sector_Ct          warn if > 0, fail if ≥ 100   a few remaps are the drive doing its job; hundreds
                                                            mean a degrading surface (fleet data shows failure
                                                            rates rise steeply with the count)
Reallocated_Event_Count        warn if > 0                  remap attempts: history worth knowing
ata_error_log_count            warn if > 0                  the ATA error log holds entries (UNC, IDNF, timeouts)
scsi_grown_defect_list         fail if > 0                  SAS/SCSI blocks remapped since manufacture: like
                                                            reallocated sectors, but SAS drives ship with a clean
                                                            grown list, so any entry is a media defect found in use
scsi_uncorrected_{read,write,  fail if > 0                  the drive's own error counter log says errors went
verify}                                                     uncorrected
scsi_pending_defects           fail if > 0                  the SAS equivalent of pending sectors
media_errors (NVMe)            fail if > 0                  unrecovered data integrity errors
available_spare_margin         fail if ≤ 0                  NVMe ``available_spare`` minus the drive's own
                                                            ``available_spare_threshold`` (ATA SSDs: spare-block
                                                            attribute minus its threshold): at or below the
                                                            vendor's own line the drive is out of spare blocks
percentage_used                warn if > 80, fail if ≥ 100  share of the rated endurance used (NVMe, SAS SSD,
                                                            ATA device statistics or the wear attribute): plan
                                                            the replacement, then replace
critical_warning_<bit>         fail if set (temperature:    NVMe critical warning, bit by bit: spare low,
                               warn)                        reliability degraded, read-only, volatile backup
                                                            failed, persistent memory read-only; an
                                                            over-temperature bit is the chassis' problem as
                                                            often as the drive's
=============================  ===========================  =====================================================

Not judged absolutely, on purpose: UDMA_CRC_Error_Count (link errors follow the cable
and the backplane, not the drive; its *delta* fails the stage in this chassis),
NVMe ``num_err_log_entries`` (mostly "Invalid Field in Command" from the host's own
probing — thousands on healthy drives), Command_Timeout, unsafe shutdowns.

Every rule is an ordinary :class:`ThresholdRule` of the SMART stage: a profile
fragment or a host's expected spec overrides one by naming the same
``(stage, kind, key, op)``, e.g. a fleet that accepts up to 8 reallocated sectors::

    thresholds:
      - {stage: SMART, kind: smart_attr, key: "*/Reallocated_Sector_Ct", op: lte, threshold: 8}
"""

from __future__ import annotations

from vetting_core.model import Severity, ThresholdRule

from .parser import CRITICAL_WARNING_BITS

# counters whose growth during a stage fails it (SMART and Storage)
DELTA_CRITICAL = ("Reallocated_Sector_Ct", "Current_Pending_Sector", "Offline_Uncorrectable", "UDMA_CRC_Error_Count",
                  "Reported_Uncorrect", "media_errors", "scsi_grown_defect_list", "scsi_uncorrected_read",
                  "scsi_uncorrected_write", "scsi_uncorrected_verify", "scsi_pending_defects")
DELTA_WARNING = ("Reallocated_Event_Count", "ata_error_log_count")

CRITICAL, WARNING = Severity.critical, Severity.warning

# (counter, op, threshold, severity): the absolute health of a drive
HEALTH: tuple[tuple[str, str, float, Severity], ...] = (
    ("Current_Pending_Sector", "lte", 0, CRITICAL),
    ("Offline_Uncorrectable", "lte", 0, CRITICAL),
    ("Reported_Uncorrect", "lte", 0, CRITICAL),
    ("Reallocated_Sector_Ct", "lte", 0, WARNING),
    ("Reallocated_Sector_Ct", "lt", 100, CRITICAL),
    ("Reallocated_Event_Count", "lte", 0, WARNING),
    ("ata_error_log_count", "lte", 0, WARNING),
    ("scsi_grown_defect_list", "lte", 0, CRITICAL),
    ("scsi_uncorrected_read", "lte", 0, CRITICAL),
    ("scsi_uncorrected_write", "lte", 0, CRITICAL),
    ("scsi_uncorrected_verify", "lte", 0, CRITICAL),
    ("scsi_pending_defects", "lte", 0, CRITICAL),
    ("media_errors", "lte", 0, CRITICAL),
    ("available_spare_margin", "gt", 0, CRITICAL),
    ("percentage_used", "lte", 80, WARNING),
    ("percentage_used", "lt", 100, CRITICAL),
    *((f"critical_warning_{name}", "eq", 0, WARNING if name == "temperature" else CRITICAL)
      for name in CRITICAL_WARNING_BITS.values()),
)


def delta_rules(stage: str) -> tuple[ThresholdRule, ...]:
    """Counter deltas judged around ``stage``'s disk work (SMART and Storage)."""
    return tuple(
        ThresholdRule(stage=stage, kind="smart_attr", key=f"*/{name}", op="delta_lte", threshold=0,
                      severity=severity, source="stage_default")
        for names, severity in ((DELTA_CRITICAL, CRITICAL), (DELTA_WARNING, WARNING))
        for name in names
    )


def health_rules(stage: str) -> tuple[ThresholdRule, ...]:
    """The absolute-health defaults (table above)."""
    return tuple(
        ThresholdRule(stage=stage, kind="smart_attr", key=f"*/{name}", op=op, threshold=threshold,
                      severity=severity, source="stage_default")
        for name, op, threshold, severity in HEALTH
    )


def smart_thresholds(stage: str) -> tuple[ThresholdRule, ...]:
    """Every default SMART rule for ``stage``: absolute health plus deltas."""
    return health_rules(stage) + delta_rules(stage)


def describe(rule: ThresholdRule, observed: float) -> str:
    """``sda/Current_Pending_Sector = 8 (must be ≤ 0)`` — a breach a person can act on."""
    words = {"lte": "≤", "lt": "<", "gt": ">", "gte": "≥", "eq": "=", "ne": "≠"}
    return f"{rule.key.removeprefix('*/')} = {observed:g} (must be {words.get(rule.op, rule.op)} {rule.threshold:g})"
