"""YAML from operators and plugin authors, loaded defensively.

Expected specs and config files are written by people and sometimes pasted from
elsewhere. This loader is ``yaml.SafeLoader`` plus: a size limit, no anchors or
aliases (billion-laughs bombs), a nesting depth limit, no duplicate keys, and string
keys only (integer keys optionally, for tool reports). Errors are :class:`YamlError`
with a message a person can act on.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.events import AliasEvent

MAX_BYTES = 1 << 20
MAX_DEPTH = 32


class YamlError(ValueError):
    pass


class _Loader(yaml.SafeLoader):
    depth = 0
    int_keys = True  # tool reports (stress-ng) key some maps by number

    def compose_node(self, parent, index):  # type: ignore[override]
        if self.check_event(AliasEvent):
            event = self.peek_event()
            raise YamlError(
                f"YAML aliases are not allowed (line {event.start_mark.line + 1}): "
                "write the value out instead of '*{}'".format(event.anchor)
            )
        event = self.peek_event()
        if getattr(event, "anchor", None):
            raise YamlError(
                f"YAML anchors are not allowed (line {event.start_mark.line + 1}): '&{event.anchor}'"
            )
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise YamlError(f"YAML nested deeper than {MAX_DEPTH} levels (line {event.start_mark.line + 1})")
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node, deep=False):  # type: ignore[override]
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != "tag:yaml.org,2002:str":
                if not (self.int_keys and key_node.tag == "tag:yaml.org,2002:int"):
                    shown = key_node.value if isinstance(key_node, yaml.ScalarNode) else "…"
                    raise YamlError(
                        f"YAML mapping keys must be plain strings, got {shown!r} (line {line}); "
                        "quote it if it is meant as text"
                    )
            key = self.construct_object(key_node)
            if key in seen:
                # PyYAML keeps the last value silently; a repeated key is almost always
                # a paste mistake that would drop the first setting
                raise YamlError(f"duplicate key {key!r} (lines {seen[key]} and {line})")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


class _StrKeyLoader(_Loader):
    int_keys = False


def load_yaml(
    text: str | bytes,
    *,
    what: str = "document",
    max_bytes: int = MAX_BYTES,
    int_keys: bool = True,
) -> Any:
    """Parse one YAML document safely. ``what`` names it in error messages.

    ``int_keys=False`` rejects integer mapping keys too (configuration files, whose
    keys are all names); other non-string keys (``yes:``, ``1.5:``, ``null:``, a
    mapping used as a key) are always rejected. Bytes must be UTF-8 (or UTF-16 with
    a BOM).
    """
    size = len(text.encode() if isinstance(text, str) else text)
    if size > max_bytes:
        raise YamlError(f"{what} is {size} bytes; the limit is {max_bytes}")
    loader = _Loader if int_keys else _StrKeyLoader
    try:
        return yaml.load(text, Loader=loader)  # noqa: S506 - a SafeLoader subclass
    except YamlError as exc:
        raise YamlError(f"{what}: {exc}") from None
    except yaml.YAMLError as exc:
        raise YamlError(f"{what} is not valid YAML: {exc}") from None
