"""How ``vetting serve`` serves the app: uvicorn with :class:`.http.EdgeProtocol`,
uvloop, the request timeouts, and TLS with HSTS when ``server.tls`` names a certificate.

One function, so that the tests serve the app exactly as the command does
(``tests/server/conftest.py``, ``serve_on_socket``).
"""

from __future__ import annotations

from typing import Any

from vetting_core.config import Settings


def uvicorn_config(app: Any, settings: Settings, **overrides: Any) -> Any:
    import uvicorn

    from .http import EdgeProtocol  # httptools, answering the hot agent routes itself

    s = settings.server
    loop = "asyncio"
    try:
        import uvloop  # noqa: F401

        loop = "uvloop"
    except ImportError:
        pass
    kw: dict[str, Any] = dict(
        host=s.host, port=s.port, loop=loop, http=EdgeProtocol, log_level=settings.logging.level, access_log=False,
        backlog=4096, timeout_keep_alive=75, lifespan="on",
    )
    if s.tls.cert:
        # uvicorn loads them at start-up: a missing or unreadable file stops it with the reason
        kw.update(ssl_certfile=s.tls.cert, ssl_keyfile=s.tls.key)
        if s.tls.hsts_max_age_s:  # on every reply (uvicorn's default headers; EdgeProtocol writes them too)
            kw["headers"] = [("strict-transport-security", f"max-age={s.tls.hsts_max_age_s}")]
    kw.update(overrides)
    return uvicorn.Config(app, **kw)
