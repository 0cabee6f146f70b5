"""The OpenAPI document at ``/schema/openapi.json`` is the contract: what it says is what
the server accepts, so a client generated from it works and a fuzzer finds nothing.

Litestar writes the document's paths, parameters and error responses; this module
rewrites what Litestar's generator gets wrong for msgspec Structs, with msgspec's own
JSON Schema of the same types (the types the server decodes with, so the two cannot
drift apart):

- ``array_like`` Structs (a sample, a log line, a series point) are positional arrays
  (``prefixItems``), as they are on the wire, not objects;
- the bounds in the Structs (``msgspec.Meta``: integer ranges, list lengths, ``progress``
  0..1) appear as exact ``minimum``/``maximum``/``maxItems``; path and query integers get
  exact bounds too (Litestar writes 2**63-1 as a float, which rounds up past it);
- ``additionalProperties: false`` where a Struct refuses unknown fields
  (``forbid_unknown_fields``: the operator's bodies; the agent protocol ignores unknown
  fields so that a newer agent can talk to an older server);
- ``oneOf`` for "exactly one of these fields" (a Struct's ``one_of`` class variable:
  ``RunStart``'s ``host_id`` or ``host``);
- base64 content (``bytes``) with the pattern the decoder accepts; RFC 3339 ``date-time``
  (msgspec writes a bare string); no U+0000 in any text (PostgreSQL cannot store it);
- security schemes per route: the run token on the agent routes, the host token on
  host-mode polling, the API token on the operator's; none on ``/healthz``, the login and
  ``/ipxe/{mac}``; and ``429`` on the login (its rate limit).

``tests/server/test_contract.py`` checks the result and runs schemathesis against a live
server with it.
"""

from __future__ import annotations

import types
import typing
from datetime import datetime
from typing import Any

import msgspec

from vetting_core.protocol import ErrorBody

from .auth import agent_guard, host_agent_guard, operator_guard
from .limits import MAX_DEPTH, MAX_ENTRIES, NO_NUL

BASE64 = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"
# free-form JSON (``Any``), as limits.decode takes it: no U+0000 in keys or text, bounded sizes
_JSON = "#/components/schemas/JsonValue"
FREE_FORM = {"maxProperties": MAX_ENTRIES, "propertyNames": {"pattern": NO_NUL}, "additionalProperties": {"$ref": _JSON}}
JSON_VALUE = {
    "anyOf": [
        {"type": "string", "pattern": NO_NUL}, {"type": "number"}, {"type": "boolean"}, {"type": "null"},
        {"type": "array", "maxItems": MAX_ENTRIES, "items": {"$ref": _JSON}},
        {"type": "object", **FREE_FORM},
    ],
}
SCHEMES = {
    "runToken": "the run's token (`vr_…`): shown when the run is created, put on the kernel line by /ipxe/{mac}",
    "hostToken": "the host's agent token (`vh_…`, host mode)",
    "apiToken": "an operator API token (`vo_…`): `vetting token create` or POST /api/v1/auth/token",
}


def install(app: Any) -> None:
    """Serve the refined document (built on the first request, then kept) from every
    OpenAPI route Litestar mounts (JSON, YAML, the UIs)."""
    from litestar._openapi.plugin import OpenAPIPlugin

    class RefinedOpenAPIPlugin(OpenAPIPlugin):
        __slots__ = ()

        def provide_openapi_schema(self) -> dict[str, Any]:
            if not self._openapi_schema:
                self._openapi_schema = refine(self.provide_openapi().to_schema(), self.app)
            return self._openapi_schema

    # the app creates its plugin itself: the instance gets the subclass (same slots)
    app.plugins.get(OpenAPIPlugin).__class__ = RefinedOpenAPIPlugin


def _struct_type(tp: Any) -> Any:
    """The body type msgspec can describe (a Struct, a list of them, a generic Page), or None."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1:
        tp = args[0]
    origin = typing.get_origin(tp) or tp
    if isinstance(origin, type) and issubclass(origin, msgspec.Struct):
        return tp
    if origin is list and args and _struct_type(args[0]) is not None:
        return tp
    return None


def refine(doc: dict[str, Any], app: Any) -> dict[str, Any]:
    from litestar.routes import HTTPRoute

    doc = msgspec.json.decode(msgspec.json.encode(doc))  # a copy
    ops: list[tuple[str, dict[str, Any], Any, Any, Any]] = []  # (path, operation, handler, request type, reply type)
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler in route.route_handlers:
            for method in handler.http_methods - {"OPTIONS"}:
                op = doc["paths"].get(route.path_format, {}).get(method.lower())
                if op is None:
                    continue
                sig = handler.parsed_fn_signature
                data = sig.parameters.get("data")
                ops.append((route.path, op, handler, _struct_type(data.annotation) if data else None,
                            _struct_type(sig.return_type.annotation)))
    bodies = sorted({t for *_, req, rep in ops for t in (req, rep) if t is not None} | {ErrorBody}, key=repr)
    schemas, components = msgspec.json.schema_components(bodies, ref_template="#/components/schemas/{name}")
    by_type = dict(zip(bodies, schemas))
    _refine_components(components, bodies)
    components["JsonValue"] = JSON_VALUE
    doc.setdefault("components", {})["schemas"] = components  # every body is a Struct: Litestar's are all replaced
    doc["components"]["securitySchemes"] = {
        name: {"type": "http", "scheme": "bearer", "description": text} for name, text in SCHEMES.items()
    }
    for path, op, handler, req, rep in ops:
        if req is not None:
            op["requestBody"]["content"]["application/json"]["schema"] = by_type[req]
            op["requestBody"]["required"] = not handler.parsed_fn_signature.parameters["data"].has_default
        ok = op["responses"].get(str(handler.status_code), {})
        if rep is not None and "application/json" in ok.get("content", {}):
            ok["content"]["application/json"]["schema"] = by_type[rep]
        if "" in ok.get("content", {}):  # a file: Litestar leaves its media type empty
            schema = ok["content"].pop("")["schema"]
            for media in handler.opt.get("media_types", ["application/octet-stream"]):
                ok["content"][media] = {"schema": {**schema, "contentMediaType": media}}
            ok.get("headers", {}).get("last-modified", {}).get("schema", {}).pop("format", None)  # RFC 2822, not RFC 3339
        guards = handler.resolve_guards()
        scheme = ("hostToken" if host_agent_guard in guards
                  else "runToken" if agent_guard in guards and "{run_id" in path
                  else "apiToken" if operator_guard in guards else None)
        op["security"] = [] if scheme is None else [{scheme: []}]
        if handler.opt.get("rate_limited"):
            op["responses"]["429"] = {
                "description": "too many failed attempts: wait Retry-After seconds",
                "headers": {"Retry-After": {"schema": {"type": "integer"}, "required": True}},
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
            }
        _exact_bounds(op, handler)
        for p in op.get("parameters", []):
            _no_nul(p.get("schema", {}))
    _no_nul(doc["components"]["schemas"])
    return doc


def _no_nul(node: Any) -> None:
    """Every free string gets the pattern that refuses U+0000 (:data:`.limits.NO_NUL`)."""
    if isinstance(node, dict):
        if node.get("type") == "string" and not node.keys() & {"format", "pattern", "enum", "const", "contentEncoding"}:
            node["pattern"] = NO_NUL
        for v in node.values():
            _no_nul(v)
    elif isinstance(node, list):
        for v in node:
            _no_nul(v)


def _refine_components(components: dict[str, Any], bodies: list[Any]) -> None:
    structs: dict[str, type] = {}

    def collect(tp: Any) -> None:
        for t in typing.get_args(tp) or ():
            collect(t)
        origin = typing.get_origin(tp) or tp
        if isinstance(origin, type) and issubclass(origin, msgspec.Struct) and origin.__name__ not in structs:
            structs[origin.__name__] = origin
            for f in msgspec.structs.fields(origin):
                collect(f.type)

    for t in bodies:
        collect(t)
    for name, schema in components.items():
        cls = structs.get(name)
        if cls is None:
            continue
        if getattr(cls, "one_of", None):
            schema["oneOf"] = [{"required": [f]} for f in cls.one_of]
        # msgspec writes a datetime as a bare string; the server wants RFC 3339 (with an offset)
        for i, f in enumerate(msgspec.structs.fields(cls)):
            if datetime in (f.type, *typing.get_args(f.type)):
                prop = schema["prefixItems"][i] if "prefixItems" in schema else schema["properties"][f.encode_name]
                for alt in (prop, *prop.get("anyOf", ())):
                    if alt.get("type") == "string":
                        alt["format"] = "date-time"
        for prop in schema.get("properties", {}).values():
            for s in (prop, *prop.get("anyOf", ())):
                if s.get("contentEncoding") == "base64":
                    s.setdefault("pattern", BASE64)
                if s.get("type") == "object" and not s.keys() & {"properties", "additionalProperties"}:
                    # dict[str, Any]: free-form JSON, bounded by limits.check_free_form
                    s.update(FREE_FORM)
                    prop["description"] = (f"free-form JSON: at most {MAX_DEPTH} levels of objects and arrays, "
                                           f"{MAX_ENTRIES} entries in each, no U+0000 in its text")


def _exact_bounds(op: dict[str, Any], handler: Any) -> None:
    """Path and query integers with the bounds the handler checks, exactly: Litestar
    writes them as floats (2**63-1 becomes 2**63, one past what the server takes) and
    leaves out a lower bound of 0."""
    kwargs = {}
    for name, fd in handler.parsed_fn_signature.parameters.items():
        kd = fd.kwarg_definition
        if kd is not None and hasattr(kd, "ge"):
            kwargs[getattr(kd, "name", None) or name] = kd
    for p in op.get("parameters", []):
        kd, schema = kwargs.get(p["name"]), p.get("schema", {})
        ints = [a for a in (schema, *schema.get("oneOf", ())) if a.get("type") == "integer"]
        if kd is None or not ints:
            continue
        for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
            schema.pop(key, None)
        bounds = {"minimum": kd.ge, "maximum": kd.le, "exclusiveMinimum": kd.gt, "exclusiveMaximum": kd.lt}
        ints[0].update({k: int(v) for k, v in bounds.items() if v is not None})
