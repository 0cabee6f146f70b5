"""Artifact files uploaded by agents: a stage's raw tool output, kept on the server.

The agent sends each artifact (``ArtifactUpload``) through its spool *before* the stage
result that lists it, so the file outlives the live image. The server checks the
content against the SHA-256 the stage computed, stores it under
``data_dir/artifacts/run-<id>/<stage>/`` (written to a temporary name and renamed),
and records it with ``location = 'server'``; a retried upload is acknowledged with
``stored: false`` and stored once. The janitor deletes these files after
``retention.artifacts_days``, never the run's history.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from pathlib import Path

import anyio.to_thread

from vetting_core.protocol import ArtifactAck, ArtifactUpload

from .database import utcnow
from .errors import conflict, unprocessable
from .runtime import Runtime

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


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


async def store_artifact(rt: Runtime, run_id: int, up: ArtifactUpload) -> ArtifactAck:
    a = up.artifact
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
    await anyio.to_thread.run_sync(lambda: _write_once(path, up.content))  # same content, same name: harmless twice
    async with rt.unit() as u:
        exists = await u.tx.fetchval(
            "SELECT id FROM artifacts WHERE run_id = $1 AND sha256 = $2 AND location = 'server' AND path = $3",
            run_id, digest, str(path),
        )
        if exists is not None:
            return ArtifactAck(sha256=digest, stored=False)
        await u.tx.execute(
            "INSERT INTO artifacts (run_id, stage_id, kind, path, sha256, size_bytes, location, created_at) "
            "VALUES ($1, $2, $3, $4, $5, $6, 'server', $7)",
            run_id, stage_id, a.kind, str(path), digest, len(up.content), utcnow(),
        )
    return ArtifactAck(sha256=digest, stored=True)
