"""Typed request-body decoding for the hot agent routes.

Litestar's default JSON path decodes a body into Python dicts and lists and then
converts them into the Struct — two passes, and the larger share of a sensor batch's
CPU time (measured with py-spy under ``bench/ingest.py``). ``FastBody[SensorBatch]``
is a DTO that decodes the raw bytes straight into the Struct with a cached
``msgspec.json.Decoder`` (one C pass, validation included), while the OpenAPI document
still shows the Struct's own schema. Every JSON body of the API is decoded this way,
bounded by :mod:`..api.limits`.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar.dto import MsgspecDTO
from litestar.typing import FieldDefinition

from ..api import limits

_decoders: dict[Any, msgspec.json.Decoder] = {}


class FastBody(MsgspecDTO):  # type: ignore[type-arg]
    def decode_bytes(self, value: bytes) -> Any:
        model = self.model_type
        dec = _decoders.get(model)
        if dec is None:
            dec = _decoders[model] = msgspec.json.Decoder(model)
        req = self.asgi_connection
        return limits.decode(dec, value, f"{req.method} {req.url.path}")

    @classmethod
    def create_openapi_schema(cls, field_definition: FieldDefinition, handler_id: str, schema_creator: Any) -> Any:
        return schema_creator.for_field_definition(
            FieldDefinition.from_annotation(cls.model_type, kwarg_definition=field_definition.kwarg_definition)
        )
