"""A plan document (what an operator writes in YAML) and the pure checks on it.

    name: bios-1.1.0-rack12
    targets: [node1, node2]                  # host names; or a selector:
    # selector: {name: "rack12-*", model: "*R650*"}
    artifacts:
      - component: bios
        version: "1.1.0"
        sha256: 3f5a…                        # pins the exact image in the artifact store
    policy:
      max_concurrent: 2                      # hosts out of service at once (vetting included)
      maintenance_window: {days: [sat, sun], start: "22:00", end: "04:00", timezone: Europe/Paris}
      approval_required: true
      stop_on_failure: true                  # a failed host leaves the rest pending → cancelled
      retries: 0                             # more attempts per host (a checksum mismatch is never retried)
      verify_timeout_s: 600                  # how long the new version may take to show
      vet_after_update: {profile: quick}     # then a vetting run per host; null: none

Bounded everywhere (names, lists, numbers), so a document is checked before anything
is stored; every error names its field (``$.policy.max_concurrent: …``).
"""

from __future__ import annotations

import re
from datetime import datetime, time, timedelta
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Short = Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
Sha256 = Annotated[str, msgspec.Meta(pattern="^[0-9a-fA-F]{64}$")]
Glob = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


class PlanError(ValueError):
    """A plan document that cannot be accepted; the text names the field."""


class Selector(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Hosts chosen by name and/or model (globs, case-insensitive). ``model`` matches
    the product the host's last inventory reported (``system.product``) or its
    expected spec's ``description``."""

    name: Glob | None = None
    model: Glob | None = None


class ArtifactRef(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    component: Short
    version: Short
    sha256: Sha256


class Window(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    start: str  # "HH:MM"
    end: str  # "HH:MM"; before start: the window runs past midnight
    days: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] = msgspec.field(default_factory=lambda: list(DAYS))  # days it opens
    timezone: Short = "UTC"


class Vet(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    profile: Short = "quick"
    non_destructive: bool = True
    stages: Annotated[list[Short], msgspec.Meta(max_length=50)] | None = None


class Policy(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    max_concurrent: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 1
    maintenance_window: Window | None = None
    approval_required: bool = False
    stop_on_failure: bool = True
    retries: Annotated[int, msgspec.Meta(ge=0, le=10)] = 0
    retry_delay_s: Annotated[float, msgspec.Meta(ge=0, le=86400)] = 60.0
    verify_timeout_s: Annotated[float, msgspec.Meta(ge=1, le=7200)] = 600.0
    vet_after_update: Vet | None = None


class PlanDocument(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: Name
    artifacts: Annotated[list[ArtifactRef], msgspec.Meta(min_length=1, max_length=20)]
    targets: Annotated[list[Name], msgspec.Meta(max_length=10000)] | None = None
    selector: Selector | None = None
    policy: Policy = msgspec.field(default_factory=Policy)


def parse_plan(data: object) -> PlanDocument:
    """Validate a plan (already parsed from YAML or JSON); :class:`PlanError` names the field."""
    try:
        doc = msgspec.convert(data, PlanDocument)
    except msgspec.ValidationError as exc:
        text, _, path = str(exc).partition(" - at `")
        raise PlanError(f"{path.rstrip('`') or '$'}: {text}") from None
    check_plan(doc)
    return doc


def check_plan(doc: PlanDocument) -> None:
    if (doc.targets is None) == (doc.selector is None):
        raise PlanError("$.targets: give either targets (host names) or a selector, not both")
    if doc.targets is not None and not doc.targets:
        raise PlanError("$.targets: name at least one host")
    if doc.selector is not None and not (doc.selector.name or doc.selector.model):
        raise PlanError("$.selector: give name and/or model")
    if doc.targets and len(set(doc.targets)) != len(doc.targets):
        raise PlanError("$.targets: a host is named twice")
    w = doc.policy.maintenance_window
    if w is not None:
        for key in ("start", "end"):
            if not _HHMM.match(getattr(w, key)):
                raise PlanError(f"$.policy.maintenance_window.{key}: {getattr(w, key)!r} is not a time like 22:00")
        if w.start == w.end:
            raise PlanError("$.policy.maintenance_window: start and end are the same time")
        if not w.days:
            raise PlanError("$.policy.maintenance_window.days: name at least one day")
        try:
            ZoneInfo(w.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise PlanError(f"$.policy.maintenance_window.timezone: unknown time zone {w.timezone!r}") from None


def _hm(text: str) -> time:
    h, m = text.split(":")
    return time(int(h), int(m))


def window_state(w: Window | None, now: datetime) -> tuple[bool, datetime | None]:
    """(is the window open at ``now``, when it next opens) — pure. ``days`` are the days
    a window *opens*: a Saturday 22:00–04:00 window is still open on Sunday at 03:00."""
    if w is None:
        return True, None
    tz = ZoneInfo(w.timezone)
    local = now.astimezone(tz)
    start, end = _hm(w.start), _hm(w.end)
    overnight = end < start
    for back in (0, 1):  # a window opened today, or yesterday and running past midnight
        day = local.date() - timedelta(days=back)
        if DAYS[day.weekday()] not in w.days:
            continue
        opens = datetime.combine(day, start, tz)
        closes = datetime.combine(day + timedelta(days=1 if overnight else 0), end, tz)
        if opens <= local < closes:
            return True, None
    for ahead in range(0, 8):
        day = local.date() + timedelta(days=ahead)
        opens = datetime.combine(day, start, tz)
        if DAYS[day.weekday()] in w.days and opens > local:
            return False, opens
    return False, None  # unreachable with at least one day


def describe_window(w: Window) -> str:
    days = "every day" if len(w.days) == 7 else ",".join(w.days)
    return f"{w.start}–{w.end} {w.timezone}, {days}"
