"""Templates of the web UI: the Jinja2 environment (``litestar.plugins.jinja``) and helpers.

Templates live in ``templates/`` beside this file; the report package's templates are on
the loader path too, so a page imports the report's ``chart`` macro as it is. Autoescaping
is on for every template: agent-supplied text (log lines, reasons, host names) is escaped,
and the only HTML built in Python is :func:`.ansi.ansi_html`'s (escaped text in spans).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

import jinja2
from litestar import Request
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Template
from litestar.template.config import TemplateConfig

from vetting_reports.render import fmt_bytes, fmt_duration, fmt_num, fmt_qty

from ..db.database import as_dt, utcnow
from . import queries

_SECRET = re.compile(r"pass|secret|token|credential|private|key", re.IGNORECASE)
_REFERENCE = re.compile(r"_(env|file)$")


def masked(config: Any, key: str = "") -> Any:
    """A boot or notifier config with secret values masked: a key that names a secret
    (``password``, ``api_token``…) shows ``••••••``, a reference to one (``password_env``,
    ``password_file``) shows where it is read from, which is what an operator checks."""
    if isinstance(config, dict):
        return {k: masked(v, k) for k, v in config.items()}
    if isinstance(config, list):
        return [masked(v, key) for v in config]
    if key and _SECRET.search(key) and not _REFERENCE.search(key) and config not in (None, ""):
        return "••••••"
    return config


def ago(value: Any, now: datetime | None = None) -> str:
    """``3m 20s`` since ``value``."""
    dt = as_dt(value)
    if dt is None:
        return "—"
    s = max(0.0, ((now or utcnow()) - dt).total_seconds())
    if s < 60:
        return f"{int(s)}s"
    if s < 3600:
        return f"{int(s // 60)}m {int(s % 60):02d}s"
    if s < 86400:
        return f"{int(s // 3600)}h {int(s % 3600 // 60):02d}m"
    return f"{int(s // 86400)}d {int(s % 86400 // 3600)}h"


def iso(value: Any) -> str:
    dt = as_dt(value)
    return "" if dt is None else dt.isoformat(timespec="seconds")


def clock(value: Any) -> str:
    dt = as_dt(value)
    return "—" if dt is None else dt.strftime("%Y-%m-%d %H:%M:%S UTC")


def span(a: Any, b: Any) -> str:
    s = queries.seconds(as_dt(a), b or utcnow()) if a is not None else None
    return "—" if s is None else fmt_duration(s)


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.ChoiceLoader([
            jinja2.PackageLoader("vetting_server.ui", "templates"),
            jinja2.PackageLoader("vetting_reports", "templates"),  # the report's chart macro
        ]),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(num=fmt_num, qty=fmt_qty, duration=fmt_duration, size=fmt_bytes, ago=ago, iso=iso, clock=clock,
                       masked=masked)
    env.globals.update(span=span, states=queries.STATES, verdicts=queries.VERDICTS)
    return env


def template_config() -> TemplateConfig:
    return TemplateConfig(instance=JinjaTemplateEngine.from_environment(environment()))


def is_htmx(request: Request) -> bool:
    return request.headers.get("hx-request") == "true"


def page(request: Request, name: str, *, status_code: int = 200, headers: dict[str, str] | None = None,
         **context: Any) -> Template:
    """Render ``name`` with the session (user, CSRF token) in the context."""
    session = getattr(request.state, "ui_session", None)
    return Template(
        name, context={"session": session, "csrf": session.csrf if session else "", "path": request.url.path, **context},
        media_type="text/html", status_code=status_code, headers=headers,
    )
