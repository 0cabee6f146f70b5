"""Every request body is decoded here, and bounded before anything reaches the database.

The Structs carry their own bounds (``msgspec.Meta``: integers to the range of the
column they land in, list lengths, ``progress`` in 0..1; see
:mod:`vetting_core.protocol`), so one C pass decodes and checks them; JSON has no
infinities or NaN and msgspec refuses numbers that overflow a float. What the Structs
cannot bound is free-form JSON (a stage's ``summary``, an ``inventory``, a firmware
``raw``, a ``boot_config``): :func:`check_free_form` walks those fields only (a plan per
Struct, compiled once) and refuses nesting deeper than :data:`MAX_DEPTH`, a container
with more than :data:`MAX_ENTRIES` entries (they are stored as JSON text: no column
range applies to the numbers inside).

Every refusal is a 400 whose ``detail`` and ``extra.field`` name the field's JSON path
(``$.samples[3][4]``), raised the same way on the routed handlers
(:class:`..edge.fastbody.FastBody`) and the edge (:mod:`..edge.routes`). A document nested deeper
than msgspec's own recursion limit (about 1,000 levels, e.g. inside an ignored unknown
field) is a 400 too, not a ``RecursionError``. Text holding U+0000 is refused everywhere
(PostgreSQL cannot store it; :class:`.app.VettingApp` refuses it in paths and queries).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any

import msgspec
import msgspec.inspect as mi
from litestar.params import PathParameter, QueryParameter

from vetting_core.model import INT64_MAX
from vetting_core.text import printable

from ..errors import ApiError

MAX_DEPTH = 32  # nesting of objects and arrays inside a free-form field
MAX_ENTRIES = 10_000  # entries of one free-form object or array
NO_NUL = "^[^\\u0000]*$"  # the pattern of every string in the OpenAPI document
_AT = re.compile(r" - at `(\$[^`]*)`$")

Check = Callable[[Any, str], None]

# ids and positions in paths and queries: BIGINT keys (a larger number is a 400 naming it)
PathId = Annotated[int, PathParameter(ge=0, le=INT64_MAX)]
QueryId = Annotated[int | None, QueryParameter(ge=0, le=INT64_MAX)]


def check_path_id(name: str, value: int) -> None:
    """For guards, which run before the handler's parameters are validated."""
    if not 0 <= value <= INT64_MAX:
        raise ApiError(400, f"{name}: {value} is not an id (0 to {INT64_MAX})", {"field": name})


def field_of(exc: msgspec.ValidationError) -> str:
    """The JSON path msgspec names in a validation error (``$`` when it names none)."""
    m = _AT.search(str(exc))
    return m[1] if m else "$"


def invalid(what: str, exc: msgspec.ValidationError) -> ApiError:
    # the message may quote the client's text (an unknown field's name): shown escaped
    return ApiError(400, printable(f"Validation failed for {what}: {exc}"), {"field": printable(field_of(exc))})


def decode(decoder: msgspec.json.Decoder, body: bytes | bytearray, what: str) -> Any:
    """Decode and bound one request body (``what``: "POST /path", for the message)."""
    if not body:
        raise ApiError(400, f"malformed JSON body: {what} needs a JSON body (got none)", {"field": "$"})
    try:
        value = decoder.decode(body)
    except msgspec.ValidationError as exc:
        if "got `float`" not in str(exc):
            raise invalid(what, exc) from None
        value = _integral_floats(decoder, body, what, exc)
    except msgspec.DecodeError as exc:
        raise ApiError(400, f"malformed JSON body: {exc}", {"field": "$"}) from None
    except RecursionError:
        raise ApiError(400, "malformed JSON body: nested too deeply", {"field": "$"}) from None
    check = plan(decoder.type)
    if check is not None:
        check(value, "$")
    if b"\\u0000" in body:  # rare: only then are the strings walked
        _no_nul(value, "$")
    return value


def _no_nul(value: Any, path: str) -> None:
    """Text may not hold U+0000: PostgreSQL cannot store it (a 500, and a batch the agent
    retries for ever), so it is refused on every engine alike (``NO_NUL`` in the document)."""
    if isinstance(value, str):
        if "\x00" in value:
            raise _too(path, "text may not contain U+0000 (NUL)")
    elif isinstance(value, msgspec.Struct):
        positional = value.__struct_config__.array_like  # named as on the wire: $.lines[0][3]
        for i, f in enumerate(value.__struct_fields__):
            _no_nul(getattr(value, f), f"{path}[{i}]" if positional else f"{path}.{f}")
    elif isinstance(value, (list, tuple)):
        for i, x in enumerate(value):
            _no_nul(x, f"{path}[{i}]")
    elif isinstance(value, dict):
        for k, x in value.items():
            _no_nul(k, f"{path}.{k}")
            _no_nul(x, f"{path}.{k}")


def _integral_floats(decoder: msgspec.json.Decoder, body: bytes | bytearray, what: str, exc: msgspec.ValidationError) -> Any:
    """JSON Schema counts ``221.0`` as an integer (the OpenAPI document says ``integer``),
    msgspec does not: a body refused for a float where an integer goes is decoded again
    with every integral float as an int (only then: the usual path costs nothing)."""
    def ints(v: Any) -> Any:
        t = type(v)
        if t is float and v.is_integer():
            return int(v)
        if t is list:
            return [ints(x) for x in v]
        if t is dict:
            return {k: ints(x) for k, x in v.items()}
        return v

    try:
        return msgspec.convert(ints(msgspec.json.decode(body)), decoder.type)
    except (msgspec.ValidationError, RecursionError):
        raise invalid(what, exc) from None


def _too(path: str, message: str) -> ApiError:
    path = printable(path)  # a free-form key may hold control characters
    return ApiError(400, f"{path}: {message}", {"field": path})


def check_free_form(value: Any, path: str) -> None:
    """Bound one free-form JSON value's nesting and sizes (iteratively: depth is what is
    being checked)."""
    stack: list[tuple[Any, str, int]] = [(value, path, 0)]
    while stack:
        v, p, depth = stack.pop()
        t = type(v)
        if t is dict or t is list:
            if depth >= MAX_DEPTH:
                raise _too(p, f"nested deeper than {MAX_DEPTH} levels")
            if len(v) > MAX_ENTRIES:
                raise _too(p, f"{len(v)} entries is more than {MAX_ENTRIES}")
            if t is dict:
                stack.extend((x, f"{p}.{k}", depth + 1) for k, x in v.items())
            else:
                stack.extend((x, f"{p}[{i}]", depth + 1) for i, x in enumerate(v))


_PLANS: dict[Any, Check | None] = {}


def plan(tp: Any) -> Check | None:
    """The check of a decoded ``tp`` value: None when ``tp`` holds no free-form JSON
    (the hot batches), so nothing is walked."""
    if tp not in _PLANS:
        _PLANS[tp] = _compile(mi.type_info(tp), {})
    return _PLANS[tp]


def _compile(info: mi.Type, structs: dict[type, Check | None]) -> Check | None:
    if isinstance(info, mi.AnyType):
        return check_free_form
    if isinstance(info, (mi.ListType, mi.VarTupleType)):
        item = _compile(info.item_type, structs)
        if item is None:
            return None

        def each(v: Any, p: str) -> None:
            for i, x in enumerate(v):
                item(x, f"{p}[{i}]")

        return each
    if isinstance(info, mi.DictType):
        val = _compile(info.value_type, structs)
        if val is None:
            return None

        def each_value(v: Any, p: str) -> None:
            for k, x in v.items():
                val(x, f"{p}.{k}")

        return each_value
    if isinstance(info, mi.UnionType):  # e.g. ``dict[str, Any] | None``: the JSON inside
        if all(_compile(t, structs) is None for t in info.types):
            return None
        return lambda v, p: check_free_form(v, p) if type(v) in (dict, list) else None
    if isinstance(info, mi.StructType):
        cls = info.cls
        if cls in structs:  # recursive: checked through the entry once it is built
            return lambda v, p: (structs[cls] or _noop)(v, p)
        structs[cls] = None
        fields = [(f.name, f.encode_name, c) for f in info.fields if (c := _compile(f.type, structs)) is not None]
        if not fields:
            return None

        def check(v: Any, p: str) -> None:
            for name, enc, c in fields:
                x = getattr(v, name)
                if x is not None:
                    c(x, f"{p}.{enc}")

        structs[cls] = check
        return check
    return None


def _noop(v: Any, p: str) -> None:
    pass
