"""The API documentation pages work on an air-gapped network: every asset a page
references comes from the server itself (no CDN, no web fonts).

A real server process is asked for each page; every ``src``/``href`` in the page and
every ``url(...)`` in the stylesheets it loads must be a path on this server, and is
fetched from it."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import pytest

from tests.support.server import ServerProcess


class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("src", "href") and value:
                self.refs.append(value)


def _css_urls(css: str) -> list[str]:
    return [u.strip("'\"") for u in re.findall(r"url\(([^)]*)\)", css) if not u.strip("'\" ").startswith("data:")]


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    with ServerProcess(tmp_path_factory.mktemp("openapi")) as s:
        yield s


@pytest.mark.parametrize(("page", "needs"), [
    ("/schema", ["redoc.standalone.js"]),
    ("/schema/redoc", ["redoc.standalone.js"]),
    ("/schema/swagger", ["swagger-ui-bundle.js", "swagger-ui-standalone-preset.js", "swagger-ui.css"]),
])
def test_the_page_and_every_asset_come_from_the_server(srv, page, needs):
    r = srv.agent("GET", page, None)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html"), (page, r.status_code)
    assert "googleapis" not in r.text and "cdn." not in r.text and "unpkg" not in r.text
    parser = _Refs()
    parser.feed(r.text)
    assert parser.refs, f"{page} references no asset"
    fetched = []
    queue = [urljoin(srv.base_url + page, ref) for ref in parser.refs]
    while queue:
        url = queue.pop()
        parts = urlsplit(url)
        assert (parts.scheme, parts.netloc) == ("http", f"127.0.0.1:{srv.port}"), f"{page} loads {url} from elsewhere"
        a = srv.agent("GET", parts.path, None)
        assert a.status_code == 200 and len(a.content) > 100, (url, a.status_code)
        fetched.append(parts.path.rsplit("/", 1)[-1])
        if parts.path.endswith(".css"):
            queue += [urljoin(url, u) for u in _css_urls(a.text)]
    assert set(needs) <= set(fetched), fetched
    assert "favicon-32x32.png" in fetched


def test_the_pages_embed_the_api_document(srv):
    spec = srv.agent("GET", "/schema/openapi.json", None).json()
    assert spec["info"]["title"] == "Vetting orchestrator"
    assert "/api/v1/runs/{run_id}/retry-stage" in spec["paths"] and "/metrics" in spec["paths"]
    assert "/static/openapi" not in str(spec["paths"])  # the assets are not API routes
    swagger = srv.agent("GET", "/schema/swagger", None).text
    assert "/api/v1/runs/{run_id}/retry-stage" in swagger  # the spec is inline: nothing else to fetch
