"""The operator's reads of runs and of the event log, as Piccolo queries (:mod:`..db.orm`).

One place for what the operator API (``api/operator.py``) and the web UI (``ui/``) ask
of runs and events: a run with its host's name, a page of runs (filtered, ordered,
counted: the API's ``GET /runs`` and a host's page in the UI), a run's stages, a host's
inventories, a stretch of the event log (all of it, a host's or a run's) and the audit
log. These are cold reads: Piccolo's compile step is small beside the query, and they
return the rows the hand-written SQL before them did, on SQLite and PostgreSQL alike.
The dashboard's reads stay SQL in :mod:`vetting_server.ui.queries` (it says why).
"""

from __future__ import annotations

from typing import Any

from piccolo.columns import Column
from piccolo.columns.combination import Where
from piccolo.query.functions.conditional import Coalesce
from piccolo.query.functions.string import Lower
from piccolo.querystring import QueryString

from ..db import orm
from ..db.database import Database
from ..db.tables import Events, Runs, Stages

RUN_ORDER: dict[str, Column] = {
    "id": Runs.id, "started_at": Runs.started_at, "state": Runs.state, "host": Runs.host_id.name,
    "profile": Runs.profile, "completed_at": Runs.completed_at, "state_changed_at": Runs.state_changed_at,
}
"""What a page of runs may be ordered by (the API's ``order_by``), then by run id the same way."""


def _run_filters(state: str | None, host_id: int | None, host: str | None, profile: str | None,
                 result: str | None) -> list[Where]:
    given = ((Runs.state, state), (Runs.host_id, host_id), (Runs.host_id.name, host), (Runs.profile, profile),
             (Runs.result, result))
    return [column == value for column, value in given if value is not None]


async def run_row(db: Database, run_id: int) -> dict[str, Any] | None:
    """The run, with its host's ``host_name`` and ``boot_provider``."""
    return await orm.row(db, Runs.select(
        *Runs.all_columns(), Runs.host_id.name.as_alias("host_name"), Runs.host_id.boot_provider.as_alias("boot_provider"),
    ).where(Runs.id == run_id))


async def stages(db: Database, run_id: int) -> list[dict[str, Any]]:
    """The run's stages in pipeline order."""
    return await orm.rows(db, Stages.select().where(Stages.run_id == run_id).order_by(Stages.ordinal))


async def runs(db: Database, *, state: str | None = None, host_id: int | None = None, host: str | None = None,
               profile: str | None = None, result: str | None = None, order_by: str = "id", descending: bool = True,
               limit: int = 50, offset: int = 0) -> list[dict[str, Any]]:
    """A page of runs with their host's ``host_name``, ordered by ``RUN_ORDER[order_by]``
    then by id, both ``descending`` or both not."""
    query = Runs.select(*Runs.all_columns(), Runs.host_id.name.as_alias("host_name"))
    filters = _run_filters(state, host_id, host, profile, result)
    if filters:
        query = query.where(*filters)
    return await orm.rows(db, query.order_by(RUN_ORDER[order_by], Runs.id, ascending=not descending)
                          .limit(limit).offset(offset))


async def count_runs(db: Database, *, state: str | None = None, host_id: int | None = None, host: str | None = None,
                     profile: str | None = None, result: str | None = None) -> int:
    """How many runs the same filters as :func:`runs` match."""
    query = Runs.count()
    filters = _run_filters(state, host_id, host, profile, result)
    if filters:
        query = query.where(*filters)
    return int(await orm.value(db, query))


async def inventories(db: Database, host_id: int) -> list[dict[str, Any]]:
    """The two latest runs of a host that collected an inventory (newest first)."""
    return await orm.rows(db, Runs.select(Runs.id, Runs.inventory_json, Runs.started_at)
                          .where(Runs.host_id == host_id, Runs.inventory_json.is_not_null())
                          .order_by(Runs.id, ascending=False).limit(2))


async def events(db: Database, *, after: int, limit: int, run_id: int | None = None,
                 host_id: int | None = None) -> list[dict[str, Any]]:
    """The event log after event id ``after`` (of one run or one host, or all), oldest first."""
    query = Events.select().where(Events.id > after)
    if run_id is not None:
        query = query.where(Events.run_id == run_id)
    if host_id is not None:
        query = query.where(Events.host_id == host_id)
    return await orm.rows(db, query.order_by(Events.id).limit(limit))


async def audit(db: Database, *, before: int | None, text: str | None, limit: int = 100) -> list[dict[str, Any]]:
    """Operator actions (``audit.*`` events), newest first, ``before`` an event id;
    ``text`` found in the message or the actor (any case) or the kind. ``lower(…) LIKE``
    rather than ``ILIKE``: SQLite has no ``ILIKE``, and both engines lower the same way."""
    query = Events.select().where(Events.kind.like("audit.%"))
    if before:
        query = query.where(Events.id < before)
    if text:
        pattern = f"%{text.lower()}%"
        found = (Lower(Events.message).like(pattern), Lower(Coalesce(Events.actor, "")).like(pattern),
                 QueryString("{}", Events.kind).like(pattern))
        query = query.where(QueryString("({} OR {} OR {})", *found))
    return await orm.rows(db, query.order_by(Events.id, ascending=False).limit(limit))
