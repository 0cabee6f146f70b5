"""The live image for the end-to-end tests, built once per content and cached on the machine.

    image = ensure_image()          # builds with `make -C live-image` only when missing
    image.kernel, image.initrd, image.packages

The cache key is a SHA-256 over what goes into the image: the tracked files (as they
are in the working tree) of ``live-image/``, ``pyproject.toml`` and the packages the
agent imports (its own, the core, the report writers, the packages of the ``vetting``
entry points, which its plugin loader imports, and of the server only the modules an
entry point names). A change to the server alone does not rebuild the image.
The cache is ``$VETTING_LIVE_CACHE`` or ``/var/cache/vetting-live``: one folder per key
(the three newest are kept) and the unpacked mkosi; with mkosi's own package cache
(``/var/cache/mkosi``) a fresh clone in CI downloads nothing twice.

``python -m tests.support.liveimage`` builds (when needed) and prints the folder;
``.ci/run`` calls it before the tests so the build is not charged to a test.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("VETTING_LIVE_CACHE") or "/var/cache/vetting-live")
KEEP = 3
ARTIFACTS = ("vetting-live.vmlinuz", "vetting-live.cpio.zst", "vetting-live.packages", "vetting-live.manifest")


@dataclass(frozen=True)
class LiveImage:
    dir: Path
    key: str

    @property
    def kernel(self) -> Path:
        return self.dir / "vetting-live.vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.dir / "vetting-live.cpio.zst"

    @property
    def packages(self) -> Path:
        return self.dir / "vetting-live.packages"


def _agent_sources() -> list[str]:
    """What the agent loads: its own package, the core, the report writers (local mode)
    and the packages the ``vetting`` entry points live in (the agent's plugin loader
    imports every one). Of the server package, only the modules an entry point names
    (and its ``__init__``) count."""
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    names = {"vetting_agent", "vetting_core", "vetting_reports"}
    for target in meta["project"]["entry-points"]["vetting"].values():
        module = target.split(":", 1)[0].split(".")
        if module[0] != "vetting_server":
            names.add(module[0])
            continue
        names.add("vetting_server/__init__.py")
        rel = "/".join(module[:2])
        names.add(rel if (REPO / rel).is_dir() else rel + ".py")
    return sorted(names)


def image_key() -> str:
    paths = ["live-image", "pyproject.toml", *_agent_sources()]
    listed = subprocess.run(["git", "ls-files", "-z", "--", *paths],
                            cwd=REPO, capture_output=True, check=True).stdout
    h = hashlib.sha256()
    for rel in sorted(set(filter(None, listed.decode().split("\0")))):
        path = REPO / rel
        h.update(rel.encode() + b"\0")
        h.update(path.read_bytes() if path.is_file() else b"(deleted)")
        h.update(b"\0")
    return h.hexdigest()[:20]


def cached_image() -> LiveImage | None:
    key = image_key()
    image = LiveImage(CACHE / key, key)
    return image if all((image.dir / a).is_file() for a in ARTIFACTS) else None


def build(key: str) -> LiveImage:
    """``make -C live-image`` (mkosi unpacked under CACHE), then copy the artifacts in."""
    out = CACHE / key
    started = time.monotonic()
    subprocess.run(
        ["make", "-C", str(REPO / "live-image"), f"TOOLS={CACHE / 'tools'}"],
        check=True, stdout=sys.stderr,
    )
    tmp = CACHE / f".{key}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for a in ARTIFACTS:
        shutil.copy2(REPO / "live-image" / "build" / a, tmp / a)
    (tmp / "build-seconds").write_text(f"{time.monotonic() - started:.0f}\n")
    os.replace(tmp, out)
    _prune()
    return LiveImage(out, key)


def _prune() -> None:
    images = sorted((d for d in CACHE.iterdir() if d.is_dir() and (d / ARTIFACTS[0]).is_file()),
                    key=lambda d: d.stat().st_mtime, reverse=True)
    for old in images[KEEP:]:
        shutil.rmtree(old, ignore_errors=True)


def ensure_image() -> LiveImage:
    """The cached image for this checkout, built first when missing (one build at a
    time on the machine: a second caller waits for the first and reuses its image)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        image = cached_image()
        if image is None:
            image = build(image_key())
        os.utime(image.dir)  # most recently used: kept by _prune
        return image


if __name__ == "__main__":
    print(ensure_image().dir)
