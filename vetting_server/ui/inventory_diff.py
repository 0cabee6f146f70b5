"""What changed in a host between two runs' inventories: what was repaired or swapped.

Both documents are flattened to dotted paths (``memory.dimms[S123].locator``). List
items are named by what identifies the part, not by position — its serial number first,
else its slot (a DIMM's locator), address (PCI), MAC, path or name — so a swapped disk
or DIMM shows as one removed and one added (with the slot it sat in), a disk moved to
another bay as its path changed, and a reordered list shows no change. Volatile values (the
negotiated NIC speed, the link state, the current PCIe speed) are diffed too: a link that
came back at full width after a reseat is exactly what an operator wants to see.
"""

from __future__ import annotations

from typing import Any

# the field that names a list item, first one present wins
_ID_FIELDS = ("serial", "uuid", "locator", "address", "mac", "path", "name", "index")
# not worth a line: counters of the probe itself
_SKIP = {"unavailable", "extra"}


def _item_id(item: Any, i: int) -> str:
    if isinstance(item, dict):
        for f in _ID_FIELDS:
            v = item.get(f)
            if v not in (None, ""):
                return str(v)
    return str(i)


def flatten(doc: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(doc, dict):
        for k, v in doc.items():
            if not prefix and k in _SKIP:
                continue
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(doc, list) and all(isinstance(x, dict) for x in doc) and doc:
        seen: dict[str, int] = {}
        for i, item in enumerate(doc):
            ident = _item_id(item, i)
            n = seen[ident] = seen.get(ident, 0) + 1
            out.update(flatten(item, f"{prefix}[{ident}{'' if n == 1 else f'#{n}'}]"))
    else:
        out[prefix] = doc if not isinstance(doc, list) else ", ".join(map(str, doc))
    return out


def inventory_diff(before: dict[str, Any] | None, after: dict[str, Any] | None) -> list[dict[str, Any]]:
    """``[{path, before, after, change}]`` with change ``added``, ``removed`` or ``changed``,
    in path order; CPU flags are left out (hundreds of words, noise for this view)."""
    a, b = flatten(before or {}), flatten(after or {})
    out = []
    for path in sorted(a.keys() | b.keys()):
        if path.endswith(".flags"):
            continue
        old, new = a.get(path), b.get(path)
        if old == new:
            continue
        change = "added" if path not in a else "removed" if path not in b else "changed"
        out.append({"path": path, "before": old, "after": new, "change": change})
    return out
