"""How the client commands print: aligned tables, ``key  value`` pairs, or the API's
JSON for scripts (``--json``)."""

from __future__ import annotations

import json
from typing import Any


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    text = str(v)
    if len(text) >= 19 and text[4:5] == "-" and text[10:11] == "T":  # an ISO timestamp: to the second
        return text[:19].replace("T", " ")
    return " ".join(text.split())


def _table(rows: list[dict[str, Any]], cols: list[str], headers: list[str] | None = None) -> str:
    """Aligned columns; the last one is not padded."""
    cells = [[_cell(r.get(c)) for c in cols] for r in rows]
    heads = [h.upper() for h in (headers or cols)]
    widths = [max([len(h)] + [len(x[i]) for x in cells]) for i, h in enumerate(heads)]

    def line(values: list[str]) -> str:
        return "  ".join(v.ljust(w) for v, w in zip(values, widths)).rstrip()

    return "\n".join([line(heads)] + [line(row) for row in cells])


def _pairs(items: list[tuple[str, Any]]) -> str:
    """``key  value`` lines, keys aligned."""
    width = max(len(k) for k, _ in items)
    return "\n".join(f"{k.ljust(width)}  {_cell(v) if not isinstance(v, str) else v}" for k, v in items)


def _json(data: Any) -> None:
    print(json.dumps(data, indent=2))
