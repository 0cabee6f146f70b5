"""gpu_burn (wilicc/gpu-burn): argv and a pure parser of its console output.

gpu_burn exits 0 whatever happened (wilicc/gpu-burn#12), so the verdict comes from
the text: the final ``Tested N GPUs:`` block (``GPU i: OK|FAULTY``), the per-GPU
error counts in the progress lines (``errors: 0 - 123 (WARNING!)``, ``(DIED!)``),
and sanity: a GPU reported ``OK`` with no work done (0 Gflop/s, wilicc/gpu-burn#123)
or no verdict block at all is not a pass.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_PROGRESS = re.compile(r"^\s*(?P<pct>\d+(?:\.\d+)?)%\s+proc'd:\s*(?P<rest>.*)$")
_PROC = re.compile(r"(-?\d+)\s+\((\d+(?:\.\d+)?)\s+Gflop/s\)")
_ERR = re.compile(r"(-?\d+)\s*(?:\((WARNING|DIED)!\))?")
_TEMP = re.compile(r"(-?\d+)\s*C\b")
_VERDICT = re.compile(r"^\s*GPU\s+(?P<idx>\d+):\s+(?P<v>OK|FAULTY)\s*$")
_TESTED = re.compile(r"^\s*Tested\s+(?P<n>\d+)\s+GPUs:")
_INIT = re.compile(r"^GPU (?P<idx>\d+): (?P<name>.+?) \(UUID: (?P<uuid>[^)]+)\)")


def build_argv(duration_s: float, *, tensor_cores: bool = True, doubles: bool = False, binary: str = "gpu_burn") -> list[str]:
    argv = [binary]
    if doubles:
        argv.append("-d")
    elif tensor_cores:
        argv.append("-tc")
    argv.append(str(max(1, int(round(duration_s)))))
    return argv


@dataclass
class GpuBurnGpu:
    index: int
    name: str = ""
    uuid: str = ""
    verdict: str | None = None  # OK / FAULTY / None (no verdict printed)
    gflops: list[float] = field(default_factory=list)
    errors: int = 0  # last error count seen (per-interval comparison errors)
    died: bool = False
    temps_c: list[float] = field(default_factory=list)

    @property
    def sustained_gflops(self) -> float:
        """Median of the non-zero interval rates (robust against ramp-up)."""
        vals = sorted(v for v in self.gflops if v > 0)
        if not vals:
            return 0.0
        mid = len(vals) // 2
        return vals[mid] if len(vals) % 2 else (vals[mid - 1] + vals[mid]) / 2


@dataclass
class GpuBurnReport:
    gpus: dict[int, GpuBurnGpu]
    tested: int | None
    aborted: bool
    init_errors: list[str]

    def failures(self, *, min_gflops: float = 1.0) -> dict[int, str]:
        """GPU index → why it fails. An empty dict means every GPU passed."""
        out: dict[int, str] = {}
        if self.aborted and not self.tested:
            for i in self.gpus or {0: None}:
                out[i] = "gpu_burn aborted: no clients alive"
        for i, g in self.gpus.items():
            if g.died:
                out[i] = "worker died (DIED!)"
            elif g.verdict == "FAULTY":
                out[i] = f"FAULTY: {g.errors} comparison errors" if g.errors else "FAULTY"
            elif g.errors:
                out[i] = f"{g.errors} comparison errors"
            elif g.verdict is None:
                out.setdefault(i, "no verdict printed for this GPU")
            elif g.sustained_gflops < min_gflops:
                why = f"; {self.init_errors[0]}" if self.init_errors else ""
                out[i] = f"reported OK but did no work ({g.sustained_gflops:.0f} Gflop/s){why}"
        if self.tested is not None and self.tested > len(self.gpus):
            for i in range(self.tested):
                out.setdefault(i, "no verdict printed for this GPU")
        if not self.gpus and not out:
            out[-1] = "gpu_burn produced no progress and no verdict"
        return out


def _split_sections(rest: str) -> tuple[str, str, str]:
    proc, _, tail = rest.partition("errors:")
    errors, _, temps = tail.partition("temps:")
    return proc, errors, temps


def parse(text: str) -> GpuBurnReport:
    gpus: dict[int, GpuBurnGpu] = {}
    tested: int | None = None
    aborted = False
    init_errors: list[str] = []

    def gpu(i: int) -> GpuBurnGpu:
        return gpus.setdefault(i, GpuBurnGpu(index=i))

    for raw in text.splitlines():
        line = raw.rstrip()
        if m := _INIT.match(line):
            g = gpu(int(m["idx"]))
            g.name, g.uuid = m["name"], m["uuid"]
        elif m := _PROGRESS.match(line):
            proc, errors, temps = _split_sections(m["rest"])
            for i, (_, gf) in enumerate(_PROC.findall(proc)):
                gpu(i).gflops.append(float(gf))
            for i, (num, flag) in enumerate(_ERR.findall(errors)):
                g = gpu(i)
                n = int(num)
                if flag == "DIED":
                    g.died = True
                if n != 0 or flag:
                    # negative counts are gpu_burn's own overflow on faulty GPUs: still errors
                    g.errors = max(abs(n), 1)
            for i, t in enumerate(_TEMP.findall(temps)):
                gpu(i).temps_c.append(float(t))
        elif m := _TESTED.match(line):
            tested = int(m["n"])
        elif m := _VERDICT.match(line):
            gpu(int(m["idx"])).verdict = m["v"]
        elif "No clients are alive" in line:
            aborted = True
        elif line.startswith("Couldn't init a GPU test") or "Error in \"" in line:
            init_errors.append(line.strip())
    return GpuBurnReport(gpus=gpus, tested=tested, aborted=aborted, init_errors=init_errors)
