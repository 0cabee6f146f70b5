"""Which of a stage's artifact files go to the orchestrator, read for the spool.

The files are read when the stage ends and copied into the spool with the result, so
a later cleanup of the work directory (or a reboot) cannot lose them before they are
acknowledged. A file over the orchestrator's limit (``ClaimReply.max_artifact_bytes``),
or one that changed or vanished since the stage hashed it, stays listed in the result
with its path on this machine and is said so in the log.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import anyio.to_thread
import structlog

from vetting_core.model import Artifact
from vetting_core.protocol import ArtifactUpload

log = structlog.get_logger()


def _read(artifacts: Sequence[Artifact], max_bytes: int) -> list[ArtifactUpload]:
    out = []
    for a in artifacts:
        if a.size_bytes > max_bytes:
            log.warning("artifact.not_uploaded", path=a.path, size=a.size_bytes, limit=max_bytes,
                        reason="over the orchestrator's max_artifact_bytes: kept on this machine only")
            continue
        try:
            content = Path(a.path).read_bytes()
        except OSError as exc:
            log.warning("artifact.unreadable", path=a.path, error=str(exc))
            continue
        if hashlib.sha256(content).hexdigest() != a.sha256:
            log.warning("artifact.changed", path=a.path, reason="the file changed after the stage recorded it")
            continue
        out.append(ArtifactUpload(artifact=a, content=content))
    return out


async def read_uploads(artifacts: Sequence[Artifact], max_bytes: int) -> list[ArtifactUpload]:
    if not artifacts or max_bytes <= 0:
        return []
    return await anyio.to_thread.run_sync(lambda: _read(artifacts, max_bytes))
