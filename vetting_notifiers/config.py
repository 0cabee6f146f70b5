"""Turning a target's ``config:`` mapping into a notifier's typed config.

msgspec names the offending field (``$.priority``); we prefix it with where the value
lives in the settings file so the operator can find it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

import msgspec

T = TypeVar("T")


class NotifierConfigError(ValueError):
    """A notification target is misconfigured; the message names the field."""


def convert_config(raw: Any, config_type: type[T], *, where: str = "$") -> T:
    """Convert ``raw`` (a mapping, or already a ``config_type``) into ``config_type``.

    ``where`` is the settings path of the mapping, e.g.
    ``$.notifications.targets[0].config``; errors read
    ``… Expected `int`, got `str` - at `$.notifications.targets[0].config.priority```.
    """
    if isinstance(raw, config_type):
        return raw
    if not isinstance(raw, Mapping):
        raise NotifierConfigError(f"{where}: expected a mapping, got {type(raw).__name__}")
    try:
        return msgspec.convert(dict(raw), config_type)
    except msgspec.ValidationError as exc:
        msg = str(exc)
        if "`$" in msg:
            msg = msg.replace("`$", f"`{where}", 1)
        else:
            msg = f"{msg} - at `{where}`"
        raise NotifierConfigError(msg) from None
