"""``GET /pxe/vmlinuz`` and ``GET /pxe/initrd.img``: the live image, from the server itself.

With ``pxe.kernel_path`` and ``pxe.initrd_path`` set, the server is the whole boot
infrastructure (dnsmasq for DHCP/TFTP, these two routes for HTTP); the iPXE script
points at them (:mod:`..boot.netboot`). The files hold no secret — the run token travels in
the per-MAC script — so the routes are open, like a TFTP server.

Range requests are answered (one range: ``bytes=a-b``, ``a-``, ``-n`` → 206 with
``Content-Range``; unsatisfiable → 416; several ranges → the whole file, as RFC 9110
allows) so an interrupted download can resume; ``If-Range`` with a stale validator
gets the whole file. The body streams in 1 MiB reads from a file opened once, so a
new image written over the old one (a rename) never mixes two images in one
response.
"""

from __future__ import annotations

import os
import re
from email.utils import formatdate
from pathlib import Path
from typing import Any

import anyio
from litestar import Controller, Request, get
from litestar.params import FromPath
from litestar.response import Stream

from ..api.auth import runtime
from ..errors import ApiError, not_found

CHUNK = 1 << 20
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
NAMES = {"vmlinuz": "kernel_path", "initrd.img": "initrd_path"}


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``(first, last)`` inclusive for one satisfiable byte range; None for the whole
    file (no header, several ranges, another unit); ``ValueError`` when unsatisfiable."""
    if not header:
        return None
    m = _RANGE.match(header.strip().replace(" ", ""))
    if m is None:
        return None
    a, b = m.groups()
    if a == "" and b == "":
        return None
    if a == "":  # the last n bytes
        n = int(b)
        if n == 0 or size == 0:
            raise ValueError("empty suffix range")
        return max(0, size - n), size - 1
    first = int(a)
    last = size - 1 if b == "" else min(int(b), size - 1)
    if first >= size or (b != "" and int(b) < first):
        raise ValueError("range outside the file")
    return first, last


def _file(request: Request, name: str) -> Path:
    key = NAMES.get(name)
    configured = getattr(runtime(request).settings.pxe, key) if key else ""
    if not configured:
        raise not_found(f"no boot file {name!r} here (pxe.kernel_path and pxe.initrd_path name the served files)")
    return Path(configured)


def _validators(st: os.stat_result) -> dict[str, str]:
    return {
        "ETag": f'"{st.st_mtime_ns:x}-{st.st_size:x}"',
        "Last-Modified": formatdate(st.st_mtime, usegmt=True),
        "Accept-Ranges": "bytes",
        "Cache-Control": "no-cache",
    }


async def _stream(fh: Any, first: int, length: int) -> Any:
    try:
        await anyio.to_thread.run_sync(fh.seek, first)
        left = length
        while left > 0:
            chunk = await anyio.to_thread.run_sync(fh.read, min(CHUNK, left))
            if not chunk:
                break  # the file shrank under us: the client sees a short body and retries
            left -= len(chunk)
            yield chunk
    finally:
        fh.close()


class BootFileController(Controller):
    path = "/pxe"
    tags = ["pxe"]

    @get("/{name:str}", summary="The live image's kernel or initrd (range requests supported)",
         media_type="application/octet-stream")
    async def boot_file(self, request: Request, name: FromPath[str]) -> Any:
        path = _file(request, name)
        try:
            fh = await anyio.to_thread.run_sync(path.open, "rb")
        except OSError as exc:
            raise ApiError(404, f"boot file {name} ({path}) cannot be read: {exc.strerror or exc}") from None
        try:
            st = os.fstat(fh.fileno())
            headers = _validators(st)
            if_range = request.headers.get("if-range")
            try:
                span = None if if_range and if_range != headers["ETag"] else parse_range(request.headers.get("range"), st.st_size)
            except ValueError:
                raise ApiError(416, f"requested range not satisfiable: {name} is {st.st_size} bytes",
                               headers={"Content-Range": f"bytes */{st.st_size}"}) from None
            first, last = span if span is not None else (0, st.st_size - 1)
            length = max(0, last - first + 1)
            headers["Content-Length"] = str(length)
            if span is not None:
                headers["Content-Range"] = f"bytes {first}-{last}/{st.st_size}"
        except BaseException:
            fh.close()
            raise
        return Stream(_stream(fh, first, length), status_code=206 if span is not None else 200, headers=headers,
                      media_type="application/octet-stream")
