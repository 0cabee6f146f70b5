"""OOM-safe sizing of a memory stress run.

Checkbox was bitten by OOM kills from ``--vm-bytes 90%``-style sizing: a percentage
of *total* memory ignores what the kernel, the live image's tmpfs and the agent
already hold. MAAS's memory tests size from what is actually free and keep a reserve;
we do the same: the budget is ``MemAvailable − reserve`` where the reserve is
``max(reserve_min_bytes, reserve_pct % of MemTotal)``, then at most ``fraction`` of
that, optionally capped, split evenly across the workers (stress-ng's ``--vm-bytes``
is per worker).
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 1 << 30
MIB = 1 << 20


class SizingError(ValueError):
    """Not enough memory to run safely (the stage skips or fails with this reason)."""


def parse_meminfo(text: str) -> dict[str, int]:
    """``/proc/meminfo`` → bytes per field (``kB`` values converted)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if not parts:
            continue
        try:
            value = int(parts[0])
        except ValueError:
            continue
        if len(parts) > 1 and parts[1] == "kB":
            value *= 1024
        out[name.strip()] = value
    return out


def read_meminfo(path: str = "/proc/meminfo") -> dict[str, int]:
    with open(path) as fh:
        return parse_meminfo(fh.read())


@dataclass(frozen=True)
class VmPlan:
    total_bytes: int  # all workers together
    per_worker_bytes: int
    workers: int
    reserve_bytes: int
    available_bytes: int

    def describe(self) -> str:
        return (
            f"{self.total_bytes / GIB:.2f} GiB across {self.workers} worker(s) "
            f"({self.per_worker_bytes / MIB:.0f} MiB each); MemAvailable "
            f"{self.available_bytes / GIB:.2f} GiB, reserve {self.reserve_bytes / GIB:.2f} GiB"
        )


def plan_vm(
    meminfo: dict[str, int],
    *,
    workers: int,
    reserve_min_bytes: int = GIB,
    reserve_pct: float = 10.0,
    fraction: float = 1.0,
    max_bytes: int | None = None,
    min_bytes: int = 64 * MIB,
) -> VmPlan:
    """The bytes to stress, never more than MemAvailable minus the reserve."""
    if workers < 1:
        raise ValueError("workers must be ≥ 1")
    if not 0 < fraction <= 1:
        raise ValueError("fraction must be in (0, 1]")
    try:
        total = meminfo["MemTotal"]
        available = meminfo["MemAvailable"]
    except KeyError as exc:
        raise SizingError(f"/proc/meminfo lacks {exc.args[0]}") from None
    reserve = max(int(reserve_min_bytes), int(total * reserve_pct / 100.0))
    budget = int((available - reserve) * fraction)
    if max_bytes is not None:
        budget = min(budget, int(max_bytes))
    page = 4096
    per_worker = (budget // workers) // page * page
    if per_worker * workers < min_bytes or per_worker <= 0:
        raise SizingError(
            f"only {max(available - reserve, 0) / MIB:.0f} MiB free above the "
            f"{reserve / MIB:.0f} MiB reserve (MemAvailable {available / MIB:.0f} MiB); "
            f"need at least {min_bytes / MIB:.0f} MiB"
        )
    return VmPlan(
        total_bytes=per_worker * workers,
        per_worker_bytes=per_worker,
        workers=workers,
        reserve_bytes=reserve,
        available_bytes=available,
    )


def read_oom_kills(path: str = "/proc/vmstat") -> int | None:
    """The kernel's ``oom_kill`` counter (None when the kernel does not expose it)."""
    try:
        with open(path) as fh:
            for line in fh:
                if line.startswith("oom_kill "):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def read_edac(root: str = "/sys/devices/system/edac/mc") -> dict[str, int]:
    """Corrected/uncorrected error counters per memory controller (``mc0/ce_count``)."""
    from pathlib import Path

    out: dict[str, int] = {}
    for mc in sorted(Path(root).glob("mc[0-9]*")):
        for f in ("ce_count", "ue_count"):
            try:
                out[f"{mc.name}/{f}"] = int((mc / f).read_text().strip())
            except (OSError, ValueError):
                continue
    return out
