"""Per-SKU nominal dense matrix-multiply rates (TFLOP/s, no sparsity).

``spec_bf16`` is the vendor datasheet figure; ``achievable`` is the share of it that
a well-tuned cuBLAS bf16 GEMM reaches in practice on a healthy board (public
measurements put large bf16 GEMMs on H100 SXM around 70–80 % of the 989 TFLOP/s
datasheet peak because of clock behaviour under full tensor load). The GPU stage
judges ``measured / (spec_bf16 × achievable)`` against a ratio threshold, so a card
delivering much less than its healthy siblings fails while datasheet optimism does
not. Override per host with ``params.nominal_tflops`` after measuring a known-good
machine (``bench/gpu_burn.py`` prints the figure).
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Sku:
    pattern: str  # regex on the NVML product name
    name: str
    spec_bf16: float  # TFLOP/s dense
    achievable: float  # fraction of spec a healthy card sustains in a bf16 GEMM
    max_temp_c: float = 87.0  # GPU core slowdown region starts above this
    memory_gib: int | None = None


SKUS: tuple[Sku, ...] = (
    Sku(r"H100 80GB HBM3|H100 SXM", "H100 SXM5 80GB", 989.4, 0.72, 87.0, 80),
    Sku(r"H100 NVL", "H100 NVL 94GB", 835.0, 0.70, 87.0, 94),
    Sku(r"H100 PCIe", "H100 PCIe 80GB", 756.0, 0.70, 87.0, 80),
    Sku(r"GH200", "GH200", 989.4, 0.72, 87.0, 96),
    Sku(r"H200", "H200 141GB", 989.4, 0.72, 87.0, 141),
    Sku(r"A100.*80GB|A100-SXM4-80GB|A100 80GB", "A100 80GB", 312.0, 0.80, 85.0, 80),
    Sku(r"A100", "A100 40GB", 312.0, 0.80, 85.0, 40),
    Sku(r"L40S", "L40S", 362.0, 0.70, 85.0, 48),
    Sku(r"L40\b", "L40", 181.0, 0.70, 85.0, 48),
    Sku(r"\bL4\b", "L4", 121.0, 0.65, 85.0, 24),
    Sku(r"\bA10\b", "A10", 125.0, 0.70, 85.0, 24),
)


def lookup(product_name: str) -> Sku | None:
    for sku in SKUS:
        if re.search(sku.pattern, product_name or ""):
            return sku
    return None


def expected_tflops(product_name: str) -> float | None:
    sku = lookup(product_name)
    return sku.spec_bf16 * sku.achievable if sku else None
