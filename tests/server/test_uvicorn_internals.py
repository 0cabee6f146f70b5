"""The edge protocol leans on uvicorn's private ``HttpToolsProtocol``
(:mod:`vetting_server.edge.http` subclasses it, calls its parser callbacks and reads
its attributes, and puts its own request in the place of uvicorn's request/response
cycle). ``pyproject.toml`` pins uvicorn to the minor release this is tested with;
these tests read the installed uvicorn's source and fail, naming what moved, when a
version no longer has what the edge touches — before a heartbeat meets it."""

from __future__ import annotations

import ast
import inspect
from importlib.metadata import requires, version

import httptools
import uvicorn.protocols.http.httptools_impl as impl
from packaging.requirements import Requirement
from uvicorn.server import ServerState

from vetting_server.edge.http import EdgeProtocol, _EdgeRequest

# the callbacks EdgeProtocol overrides (and hands to uvicorn's for every other request)
OVERRIDDEN = ("__init__", "connection_made", "connection_lost", "data_received",
              "on_headers_complete", "on_body", "on_message_complete")
# uvicorn's methods it calls without overriding them
CALLED = ("on_response_complete",)
# uvicorn's instance attributes it reads
READ = ("loop", "transport", "cycle", "parser", "url", "headers", "expect_100_continue", "tasks", "server_state")
# uvicorn methods that only ever see uvicorn's own cycle: EdgeProtocol does not pass an
# edge request on to them
OWN_CYCLE_ONLY = {"on_body", "on_message_complete"}


def _protocol_source() -> ast.ClassDef:
    tree = ast.parse(inspect.getsource(impl))
    return next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "HttpToolsProtocol")


def _self_attr(node: ast.AST, *chain: str) -> str | None:
    """``self.<chain…>.<name>`` → name."""
    if not isinstance(node, ast.Attribute):
        return None
    value = node.value
    for part in reversed(chain):
        if not (isinstance(value, ast.Attribute) and value.attr == part):
            return None
        value = value.value
    return node.attr if isinstance(value, ast.Name) and value.id == "self" else None


def test_the_installed_uvicorn_is_in_the_pinned_range():
    req = next(Requirement(r) for r in requires("vetting") or [] if Requirement(r).name == "uvicorn")
    assert version("uvicorn") in req.specifier, f"uvicorn {version('uvicorn')} is outside {req.specifier}"
    assert any(s.operator == "<" for s in req.specifier), "the edge protocol needs an upper bound on uvicorn"


def test_the_callbacks_the_edge_overrides_and_calls_are_uvicorns():
    for name in OVERRIDDEN + CALLED:
        assert name in vars(impl.HttpToolsProtocol), f"uvicorn's HttpToolsProtocol has no {name}()"
    for name in OVERRIDDEN[1:]:
        theirs = inspect.signature(getattr(impl.HttpToolsProtocol, name)).parameters
        ours = inspect.signature(getattr(EdgeProtocol, name)).parameters
        assert len(theirs) == len(ours), f"{name}{tuple(theirs)} now takes other arguments than the edge's {tuple(ours)}"
    first = list(inspect.signature(impl.HttpToolsProtocol.__init__).parameters)[1]
    assert first == "config", f"HttpToolsProtocol's first argument is {first!r}; the edge reads config.app"


def test_the_attributes_the_edge_reads_are_set_by_uvicorn():
    assigned = {name for node in ast.walk(_protocol_source()) if isinstance(node, ast.Attribute)
                and isinstance(node.ctx, ast.Store) and (name := _self_attr(node))}
    missing = set(READ) - assigned
    assert not missing, f"uvicorn's HttpToolsProtocol no longer sets {sorted(missing)}"
    assert hasattr(ServerState(), "default_headers")
    parser = httptools.HttpRequestParser(object())
    for name in ("get_method", "get_http_version", "should_keep_alive", "should_upgrade"):
        assert callable(getattr(parser, name, None)), f"httptools' parser has no {name}()"


def test_the_edge_request_has_what_uvicorn_reads_of_its_cycle():
    """Every ``self.cycle.<x>`` uvicorn touches while an edge request stands in its cycle
    must be there on the edge request (uvicorn writes ``disconnected`` and ``keep_alive``)."""
    touched: dict[str, set[str]] = {}
    for fn in _protocol_source().body:
        if isinstance(fn, ast.FunctionDef) and fn.name not in OWN_CYCLE_ONLY:
            for node in ast.walk(fn):
                if (name := _self_attr(node, "cycle")) is not None:
                    touched.setdefault(name, set()).add(fn.name)
    assert {"response_complete", "disconnected", "message_event", "keep_alive"} <= set(touched)  # the test reads what it should
    req = _EdgeRequest(1, None, "/api/v1/runs/1/heartbeat", None)  # type: ignore[arg-type]
    missing = {name: sorted(where) for name, where in touched.items() if not hasattr(req, name)}
    assert not missing, f"uvicorn now reads these of its cycle, which the edge request lacks: {missing}"
