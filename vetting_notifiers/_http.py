"""One HTTP POST with the failure modes a notifier must report.

``httpx`` is imported lazily: it belongs to the ``agent``/``server`` extras, and a bare
``vetting`` install must still be able to load (and list) these plugins.
"""

from __future__ import annotations

from typing import Any


class DeliveryError(RuntimeError):
    """The receiver refused the notification (non-2xx) or could not be reached."""

    def __init__(self, message: str, *, status: int | None = None, retry_after_s: float | None = None):
        super().__init__(message)
        self.status = status
        self.retry_after_s = retry_after_s


def _httpx() -> Any:
    try:
        import httpx
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise DeliveryError("the HTTP notifiers need httpx (pip install 'vetting[agent]')") from exc
    return httpx


async def post(
    url: str,
    *,
    content: bytes,
    headers: dict[str, str],
    timeout_s: float = 30.0,
    verify: bool | str = True,
) -> int:
    """POST ``content``; return the status code, raise :class:`DeliveryError` unless 2xx.

    The dispatcher enforces the target's own timeout around this call; ``timeout_s``
    is only a backstop so that a notifier used on its own cannot hang forever.
    """
    httpx = _httpx()
    try:
        async with httpx.AsyncClient(timeout=timeout_s, verify=verify, follow_redirects=False) as client:
            resp = await client.post(url, content=content, headers=headers)
    except httpx.HTTPError as exc:
        raise DeliveryError(f"POST {_safe(url)} failed: {type(exc).__name__}: {exc}") from None
    if 200 <= resp.status_code < 300:
        return resp.status_code
    retry_after = None
    ra = resp.headers.get("retry-after")
    if ra:
        try:
            retry_after = float(ra)
        except ValueError:
            retry_after = None
    snippet = " ".join(resp.text[:200].split())
    raise DeliveryError(
        f"POST {_safe(url)} answered HTTP {resp.status_code}" + (f": {snippet}" if snippet else ""),
        status=resp.status_code,
        retry_after_s=retry_after,
    )


def _safe(url: str) -> str:
    """The URL without its query and path secrets (Discord webhook tokens live in the path)."""
    httpx = _httpx()
    try:
        u = httpx.URL(url)
    except Exception:
        return "<invalid url>"
    path = u.path
    parts = path.split("/")
    if len(parts) > 3:
        path = "/".join(parts[:3]) + "/…"
    return f"{u.scheme}://{u.host}{':' + str(u.port) if u.port else ''}{path}"
