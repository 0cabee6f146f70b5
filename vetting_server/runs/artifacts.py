"""Artifact files uploaded by agents: a stage's raw tool output, kept on the server.

The agent sends each artifact (``ArtifactUpload``) through its spool *before* the stage
result that lists it, so the file outlives the live image. The server checks the
content against the SHA-256 the stage computed, stores it under
``data_dir/artifacts/run-<id>/<stage>/`` (written to a temporary name and renamed),
and records it with ``location = 'server'``; a retried upload is acknowledged with
``stored: false`` and stored once. The janitor deletes these files after
``retention.artifacts_days``, never the run's history.

What an agent cannot do (``docs/security.md``): upload or list a kind the server writes
itself (:data:`SERVER_KINDS`: the hold key, the reports), upload once its run is no
longer Running, or store more than ``server.max_run_artifacts`` files or
``server.max_run_artifact_bytes`` bytes per run (413). Every download serves a file
only when its row is one the server wrote (``location = 'server'``) and its resolved
path is inside the directory the server writes that kind to (:func:`stored_file`).
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from pathlib import Path
from typing import Any

import anyio.to_thread

from vetting_core.protocol import ArtifactAck, ArtifactUpload

from vetting_core.model import Artifact

from ..db.database import utcnow
from ..errors import ApiError, conflict, unprocessable
from ..runtime import Runtime

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")

# kinds the server writes (the hold's private key, the reports: ``report``, ``report_html``,
# ``report_ocptv``...): refused from agents, so that no agent row can stand in for them
SERVER_KINDS = ("hold_key", "report")
# SQL that leaves the server's own kinds out (of the agents' quota)
AGENT_KIND_SQL = "kind <> 'hold_key' AND kind <> 'report' AND kind NOT LIKE 'report\\_%' ESCAPE '\\'"


def server_kind(kind: str) -> bool:
    return kind in SERVER_KINDS or kind.startswith("report_")


def check_agent_kinds(artifacts: list[Artifact], field: str) -> None:
    """422 for an artifact of a kind only the server writes (``field``: its JSON path)."""
    for i, a in enumerate(artifacts):
        if server_kind(a.kind):
            path = f"{field}[{i}].kind" if field.endswith("artifacts") else f"{field}.kind"
            raise unprocessable(path, f"{a.kind!r} is a kind only the server writes ({', '.join(SERVER_KINDS)}, report_*)")


def inside(path: Path, root: Path) -> bool:
    """``path``, symbolic links resolved, is ``root`` or below it."""
    return path.resolve().is_relative_to(root.resolve())


def hold_dir(rt: Runtime, run_id: int) -> Path:
    """Where the server writes a run's hold key pair."""
    return rt.data_dir / "holds" / f"run-{run_id}"


def stored_file(path: str | None, root: Path) -> Path | None:
    """The file a server-written artifact row points at, when it is a regular file inside
    ``root`` (the directory the server writes that kind to); None otherwise."""
    if not path:
        return None
    p = Path(path)
    if not p.is_absolute() or not inside(p, root):
        return None
    p = p.resolve()
    return p if p.is_file() else None


def _safe(name: str) -> str:
    return _UNSAFE.sub("_", name).strip("._")[:120] or "artifact"


def _write_once(path: Path, content: bytes) -> None:
    if path.is_file() and path.stat().st_size == len(content):
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(content)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


async def _quota(tx: Any, rt: Runtime, run_id: int, size: int) -> None:
    s = rt.settings.server
    row = await tx.fetchrow(
        f"SELECT count(*) AS n, coalesce(sum(size_bytes), 0) AS total FROM artifacts "
        f"WHERE run_id = $1 AND location = 'server' AND {AGENT_KIND_SQL}",
        run_id,
    )
    n, total = int(row["n"]), int(row["total"])
    if n + 1 > s.max_run_artifacts or total + size > s.max_run_artifact_bytes:
        raise ApiError(
            413, f"run {run_id} has {n} artifacts stored ({total} bytes); one more of {size} bytes is over the run's quota "
                 f"(server.max_run_artifacts {s.max_run_artifacts}, server.max_run_artifact_bytes {s.max_run_artifact_bytes})",
            {"field": "content", "stored": n, "stored_bytes": total},
        )


async def store_artifact(rt: Runtime, run_id: int, state: str, up: ArtifactUpload) -> ArtifactAck:
    a = up.artifact
    check_agent_kinds([a], "artifact")
    if state != "Running":
        raise conflict(f"run {run_id} is {state}: artifacts are accepted only while a stage runs", state=state)
    digest = hashlib.sha256(up.content).hexdigest()
    if digest != a.sha256.lower():
        raise unprocessable("artifact.sha256", f"the content's SHA-256 is {digest}, not {a.sha256}: the upload is damaged")
    if len(up.content) > rt.settings.server.max_artifact_bytes:
        raise unprocessable("content", f"{len(up.content)} bytes is over server.max_artifact_bytes "
                                       f"({rt.settings.server.max_artifact_bytes})")
    stage_id = None
    if a.stage:
        stage_id = (await rt.stage_id_map(run_id)).get(a.stage)
        if stage_id is None:
            raise conflict(f"run {run_id} has no stage {a.stage!r}")
    path = rt.data_dir / "artifacts" / f"run-{run_id}" / _safe(a.stage or "run") / f"{digest[:12]}-{_safe(Path(a.path).name)}"
    exists = "SELECT id FROM artifacts WHERE run_id = $1 AND sha256 = $2 AND location = 'server' AND path = $3"
    if await rt.db.fetchval(exists, run_id, digest, str(path)) is not None:
        return ArtifactAck(sha256=digest, stored=False)  # a retried upload
    await _quota(rt.db, rt, run_id, len(up.content))  # before writing the file; again below, in the transaction
    await anyio.to_thread.run_sync(lambda: _write_once(path, up.content))  # same content, same name: harmless twice
    async with rt.unit() as u:
        if await u.tx.fetchval(exists, run_id, digest, str(path)) is not None:
            return ArtifactAck(sha256=digest, stored=False)
        try:
            await _quota(u.tx, rt, run_id, len(up.content))  # a concurrent upload may have taken the room
        except ApiError:
            path.unlink(missing_ok=True)  # no row names it (checked above)
            raise
        await u.tx.execute(
            "INSERT INTO artifacts (run_id, stage_id, kind, path, sha256, size_bytes, location, created_at) "
            "VALUES ($1, $2, $3, $4, $5, $6, 'server', $7)",
            run_id, stage_id, a.kind, str(path), digest, len(up.content), utcnow(),
        )
    return ArtifactAck(sha256=digest, stored=True)
