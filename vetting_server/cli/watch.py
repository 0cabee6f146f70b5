"""``vetting run show`` and ``vetting run watch``: a run's stages as a table, and its live
progress read from the server's SSE stream until the run ends."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from vetting_core.statemachine import ENDED, FAILED

from .client import Client
from .errors import http_error
from .output import _table


MARKS = {"passed": "✔", "failed": "✘", "skipped": "–", "cannot_run": "⊘", "running": "…", "hold": "!"}


def _label(state: str) -> str:
    return "could not run" if state == "cannot_run" else state


def _duration(st: dict[str, Any]) -> str:
    from datetime import datetime

    from vetting_core.progress import fmt_duration

    if not (st.get("started_at") and st.get("completed_at")):
        return ""
    t0, t1 = (datetime.fromisoformat(st[k].replace("Z", "+00:00")) for k in ("started_at", "completed_at"))
    return fmt_duration((t1 - t0).total_seconds())


def report_paths(run: dict[str, Any]) -> list[Path]:
    """The run's report files, HTML first (``report_path`` is the JSON report's)."""
    if not run.get("report_path"):
        return []
    json_path = Path(run["report_path"])
    return [json_path.with_name("report.html"), json_path, json_path.with_name("report.ocptv.jsonl")]


def _print_detail(d: dict[str, Any], *, report: bool = True) -> None:
    run = d["run"]
    print(f"run {run['id']} on {run['host_name']}: {run['state']}"
          + (f" ({run['result']})" if run["result"] else "")
          + (f" — {run['reason']}" if run["reason"] else ""))
    rows = [{"mark": MARKS.get(s["state"], " "), "stage": s["name"], "verdict": _label(s["state"]),
             "took": _duration(s), "reason": s.get("reason") or ""} for s in d["stages"]]
    print(_table(rows, ["mark", "stage", "verdict", "took", "reason"], [" ", "stage", "verdict", "took", "reason"]))
    for diff in d["spec_diffs"]:
        print(f"  spec {diff['severity']}: {diff['field']}: expected {diff['expected']}, found {diff['actual']}")
    if d["breach_count"]:
        print(f"  {d['breach_count']} threshold breach(es)")
    print(f"  {d['measurement_count']} samples, {d['log_line_count']} log lines")
    if run.get("origin"):
        print(f"  started by: {run['origin']}")
    for path in report_paths(run)[:1] if report else []:
        print(f"  report: {path}")


FINAL = ENDED | FAILED


def outcome_code(run: dict[str, Any]) -> int:
    """Exit status of a finished run: 0 passed, 3 incomplete (a stage could not run
    here), 1 anything else (failed, held, cancelled)."""
    if run["state"] == "Completed":
        return 3 if run.get("result") == "incomplete" else 0
    return 1


class _LiveLine:
    """``vetting run watch``'s progress: the local mode's line (:func:`progress_line`),
    redrawn in place on a terminal; in a pipe or a log, a line when the stage changes
    and at most every ``every_s`` seconds otherwise (as the local mode prints it)."""

    def __init__(self, started_at: Any, stream: Any = None, every_s: float = 5.0) -> None:
        self.started_at = started_at  # stage name -> when it started (UTC), from the server
        self.stream = stream or sys.stdout
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every_s = every_s
        self.drawn = False
        self.stage: str | None = None
        self.started = 0.0  # the stage's start, as a time.time()
        self.printed = 0.0

    def progress(self, stage: str | None, percent: int | None, message: str, index: str) -> None:
        import time

        from vetting_core.progress import progress_line

        now = time.time()
        if stage != self.stage:
            began = self.started_at(stage) if stage else None
            self.stage, self.started, self.printed = stage, began.timestamp() if began else now, 0.0
        elif not self.tty and now - self.printed < self.every_s:
            return
        self.printed = now
        fraction = None if percent is None else percent / 100
        text = progress_line(index, stage or "-", fraction, max(0.0, now - self.started), message)
        if self.tty:
            self.stream.write("\r\x1b[2K" + text)
            self.drawn = True
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def print(self, text: str) -> None:
        if self.drawn:
            self.stream.write("\r\x1b[2K")
            self.drawn = False
        self.stream.write(text + "\n")
        self.stream.flush()


def cmd_run_watch(args: argparse.Namespace) -> int:
    """Live stage progress from the SSE stream until the run ends (or holds). Exit
    status: :func:`outcome_code`."""
    import httpx

    from vetting_core.text import printable  # agents' text, control characters escaped

    c = Client(args)
    d = c.call("GET", f"/api/v1/runs/{args.run}")
    _print_detail(d)
    if d["run"]["state"] in FINAL:
        return outcome_code(d["run"])
    order = [s["name"] for s in d["stages"]]
    events = c.call("GET", f"/api/v1/runs/{args.run}/events", params={"limit": 5000})
    last = events[-1]["id"] if events else 0
    headers = {"Last-Event-ID": str(last), "Accept": "text/event-stream"}
    state = d["run"]["state"]

    def started_at(stage: str) -> Any:  # asked once per stage: elapsed and ETA count from there
        from datetime import datetime

        for st in c.call("GET", f"/api/v1/runs/{args.run}", params={"points": 1})["stages"]:
            if st["name"] == stage and st.get("started_at"):
                return datetime.fromisoformat(st["started_at"].replace("Z", "+00:00"))
        return None

    live = _LiveLine(started_at)
    try:
        with c.http.stream("GET", "/api/v1/events/stream", params={"run_id": args.run}, headers=headers,
                           timeout=httpx.Timeout(30, read=None)) as r:
            if r.status_code >= 400:
                raise http_error("GET", "/api/v1/events/stream", r.status_code, r.read().decode(errors="replace"))
            event, data = None, []
            for line in r.iter_lines():
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].strip())
                elif line == "" and data:
                    raw, data = "\n".join(data).strip(), []
                    if not raw:
                        continue  # a comment or a retry hint
                    payload = json.loads(raw)
                    if event == "progress":
                        stage = payload.get("stage")
                        index = f"[{order.index(stage) + 1}/{len(order)}]" if stage in order else "[-]"
                        live.progress(stage, payload.get("percent"), printable(payload.get("message") or ""), index)
                    else:
                        live.print(printable(f"{payload['ts'][11:19]} {payload['message']}"))
                        to = (payload.get("data") or {}).get("to")
                        if to:
                            state = to
                        if state in FINAL:
                            break
    except KeyboardInterrupt:
        live.print("")
        return 130
    except httpx.HTTPError as exc:
        raise c.unreachable(exc) from None
    d = c.call("GET", f"/api/v1/runs/{args.run}")
    _print_detail(d, report=getattr(args, "report_line", True))
    return outcome_code(d["run"])
