"""``vetting firmware …``: artifacts, plans, hosts' providers and inventories, remediation.

Every command talks to the server's API with the operator's token (like ``vetting run``).
``plan create`` reads a YAML plan; an artifact there may name a local ``file`` instead
of (or beside) its ``sha256``: the command hashes it, adds it to the artifact store when
the store lacks it, and sends the plan pinned to that SHA-256.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vetting_core.safeyaml import YamlError, load_yaml

from ..cli.errors import CliError

STATE_MARK = {"completed": "✔", "failed": "✘", "cancelled": "–", "running": "…", "retrying": "↻", "pending": " "}


def _client(args: argparse.Namespace) -> Any:
    from ..cli.client import Client

    return Client(args)


def _sha256(path: Path) -> str:
    from .store import sha256_file  # the server side's, imported when a command needs it

    return sha256_file(path)


def _chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        yield from iter(lambda: f.read(1 << 20), b"")


def upload(c: Any, path: Path, *, component: str, version: str, targets: list[str] | None = None,
           reboot: str = "auto", notes: str = "") -> dict[str, Any]:
    """Add ``path`` to the artifact store (its SHA-256 declared: the server checks it)."""
    params: dict[str, Any] = {"component": component, "version": version, "filename": path.name,
                              "sha256": _sha256(path), "reboot": reboot, "notes": notes}
    if targets:
        params["target"] = targets
    return c.call("POST", "/api/v1/firmware/artifacts", params=params, content=_chunks(path),
                  headers={"Content-Type": "application/octet-stream"})


def cmd_artifact_add(args: argparse.Namespace) -> int:
    c = _client(args)
    a = upload(c, Path(args.file), component=args.component, version=args.version, targets=args.target,
               reboot=args.reboot, notes=args.notes)
    print(f"artifact {a['id']}: {a['component']} {a['version']} {a['filename']} ({a['size_bytes']} bytes) sha256 {a['sha256']}")
    return 0


def cmd_artifact_list(args: argparse.Namespace) -> int:
    from ..cli.output import _table

    items = _client(args).call("GET", "/api/v1/firmware/artifacts")
    print(_table(items, ["id", "component", "version", "filename", "size_bytes", "sha256"]))
    return 0


def read_plan(c: Any, path: Path) -> dict[str, Any]:
    """The plan YAML as the API takes it: local ``file`` entries uploaded and pinned."""
    try:
        doc = load_yaml(path.read_text(), what=f"plan {path}")
    except (OSError, YamlError) as exc:
        raise CliError(f"{exc}") from None
    if not isinstance(doc, dict):
        raise CliError(f"{path}: a plan is a mapping (name, targets, artifacts, policy)")
    known: dict[str, dict[str, Any]] | None = None
    for i, art in enumerate(doc.get("artifacts") or []):
        if not isinstance(art, dict) or "file" not in art:
            continue
        file = (path.parent / str(art.pop("file"))).resolve()
        if not file.is_file():
            raise CliError(f"{path}: artifacts[{i}].file: {file} is not a file")
        digest = _sha256(file)
        if art.get("sha256") and str(art["sha256"]).lower() != digest:
            raise CliError(f"{path}: artifacts[{i}]: {file.name} has SHA-256 {digest}, not {art['sha256']}")
        art["sha256"] = digest
        if known is None:
            known = {a["sha256"]: a for a in c.call("GET", "/api/v1/firmware/artifacts")}
        if digest not in known:
            a = upload(c, file, component=str(art.get("component", "")), version=str(art.get("version", "")))
            known[digest] = a
            print(f"added {file.name} as artifact {a['id']} ({a['component']} {a['version']})")
    return doc


def print_plan(d: dict[str, Any]) -> None:
    p = d["plan"]
    counts = ", ".join(f"{n} {s}" for s, n in sorted(p["hosts"].items()))
    print(f"plan {p['id']} {p['name']!r}: {p['state']} ({counts})" + (f" — {p['reason']}" if p.get("reason") else ""))
    if p.get("waiting"):
        print(f"  waiting: {p['waiting']}")
    for a in d["artifacts"]:
        print(f"  artifact {a['id']}: {a['component']} {a['version']} ({a['filename']})")
    for u in d["updates"]:
        mark = STATE_MARK.get(u["state"], " ")
        pct = f" {u['percent']}%" if u.get("percent") is not None else ""
        line = f"  {mark} {u['host_name']:<20} {u['state']:<10} {u.get('phase') or '':<8}{pct}"
        detail = u.get("reason") if u["state"] in ("failed", "cancelled", "retrying") else u.get("message")
        if detail:
            line += f"  {detail}"
        print(line)
        if u.get("vet_run_id"):
            print(f"      vetting run {u['vet_run_id']}: {u.get('vet_state')}" + (f" ({u['vet_result']})" if u.get("vet_result") else ""))


def cmd_plan_create(args: argparse.Namespace) -> int:
    c = _client(args)
    d = c.call("POST", "/api/v1/firmware/plans", json=read_plan(c, Path(args.file)))
    if args.start:
        d = c.call("POST", f"/api/v1/firmware/plans/{d['plan']['id']}/start", json={})
    print_plan(d)
    return 0


def cmd_plan_list(args: argparse.Namespace) -> int:
    from ..cli.output import _table

    rows = _client(args).call("GET", "/api/v1/firmware/plans")
    for r in rows:
        r["hosts"] = ", ".join(f"{n} {s}" for s, n in sorted(r["hosts"].items()))
    print(_table(rows, ["id", "name", "state", "hosts", "created_by", "waiting"]))
    return 0


def cmd_plan_show(args: argparse.Namespace) -> int:
    d = _client(args).call("GET", f"/api/v1/firmware/plans/{args.plan}")
    print(json.dumps(d, indent=2) if args.json else "", end="\n" if args.json else "")
    if not args.json:
        print_plan(d)
    return 0


def cmd_plan_action(args: argparse.Namespace) -> int:
    d = _client(args).call("POST", f"/api/v1/firmware/plans/{args.plan}/{args.action}", json={"reason": args.reason})
    print_plan(d)
    return 0


def cmd_host_provider(args: argparse.Namespace) -> int:
    from ..cli.client import _host_id

    c = _client(args)
    config = json.loads(args.provider_config) if args.provider_config else {}
    h = c.call("PUT", f"/api/v1/firmware/hosts/{_host_id(c, args.host)}/provider",
               json={"kind": None if args.kind == "none" else args.kind, "config": config})
    print(f"host {h['host_name']}: firmware provider {h['provider'] or 'none'} (config from {h['config_from']})")
    return 0


def cmd_host_inventory(args: argparse.Namespace) -> int:
    from ..cli.client import _host_id
    from ..cli.output import _table

    c = _client(args)
    h = c.call("GET", f"/api/v1/firmware/hosts/{_host_id(c, args.host)}/inventory")
    print(_table(h["items"], ["component", "id", "name", "version", "updateable"]))
    return 0


def cmd_remediate(args: argparse.Namespace) -> int:
    c = _client(args)
    if args.show:
        o = c.call("GET", f"/api/v1/runs/{args.run}/firmware-remediation")
        for x in o["offers"]:
            fix = f"artifact {x['artifact']['id']} ({x['artifact']['version']})" if x["artifact"] else "no image in the store"
            print(f"  {x['component']}: {x['actual']} → {' or '.join(x['expected'])}: {fix}")
        print("available" if o["available"] else f"not available: {o['why_not']}")
        return 0 if o["available"] else 1
    d = c.call("POST", f"/api/v1/runs/{args.run}/firmware-remediation",
               json={"approval_required": args.approval_required, "reason": args.reason})
    print_plan(d)
    return 0


def add_commands(sub: Any, client_opts: Any) -> None:
    fw = sub.add_parser("firmware", help="firmware campaigns over the hosts' BMCs (docs/firmware.md)")
    fws = fw.add_subparsers(dest="firmware_command", required=True)

    art = fws.add_parser("artifact", help="firmware images in the artifact store").add_subparsers(dest="artifact_command", required=True)
    a = art.add_parser("add", help="add an image (its SHA-256 is checked by the server)")
    a.add_argument("file")
    a.add_argument("--component", required=True, help="bios, bmc, nic, hba, nvme_fw, disk_fw, gpu_vbios, cpld…")
    a.add_argument("--version", required=True)
    a.add_argument("--target", action="append", help="inventory id/name glob the image applies to (repeatable)")
    a.add_argument("--reboot", choices=["auto", "always", "never"], default="auto")
    a.add_argument("--notes", default="")
    client_opts(a)
    a.set_defaults(func=cmd_artifact_add)
    a = art.add_parser("list", help="list the images")
    client_opts(a)
    a.set_defaults(func=cmd_artifact_list)

    plan = fws.add_parser("plan", help="update plans").add_subparsers(dest="plan_command", required=True)
    p = plan.add_parser("create", help="create a plan from YAML (docs/firmware.md)")
    p.add_argument("file")
    p.add_argument("--start", action="store_true", help="start it at once (when it needs no approval)")
    client_opts(p)
    p.set_defaults(func=cmd_plan_create)
    p = plan.add_parser("list", help="list plans")
    client_opts(p)
    p.set_defaults(func=cmd_plan_list)
    p = plan.add_parser("show", help="a plan and each host's progress")
    p.add_argument("plan", type=int)
    p.add_argument("--json", action="store_true")
    client_opts(p)
    p.set_defaults(func=cmd_plan_show)
    for action, text in (("approve", "approve a plan"), ("start", "start or resume a plan"),
                         ("pause", "pause: no more hosts start"), ("cancel", "cancel: hosts not started are cancelled")):
        p = plan.add_parser(action, help=text)
        p.add_argument("plan", type=int)
        p.add_argument("--reason", default="")
        client_opts(p)
        p.set_defaults(func=cmd_plan_action, action=action)

    host = fws.add_parser("host", help="a host's firmware provider and inventory").add_subparsers(dest="fw_host_command", required=True)
    h = host.add_parser("provider", help="set a host's firmware provider")
    h.add_argument("host", help="id or name")
    h.add_argument("--kind", required=True, help="redfish, a plugin's kind, or none (use the boot provider's)")
    h.add_argument("--provider-config", dest="provider_config", help="JSON, e.g. '{\"address\": \"https://10.0.0.7\", \"username\": \"root\", \"password_env\": \"BMC_PW\"}'")
    client_opts(h)
    h.set_defaults(func=cmd_host_provider)
    h = host.add_parser("inventory", help="read a host's firmware inventory from its BMC")
    h.add_argument("host", help="id or name")
    client_opts(h)
    h.set_defaults(func=cmd_host_inventory)

    r = fws.add_parser("remediate", help="update and re-vet a run that failed on firmware versions")
    r.add_argument("run", type=int)
    r.add_argument("--show", action="store_true", help="only show what would be done")
    r.add_argument("--approval-required", action="store_true", help="create the plan for approval instead of starting it")
    r.add_argument("--reason", default="")
    client_opts(r)
    r.set_defaults(func=cmd_remediate)
