"""Configuration loading: defaults, errors that name the key, env overrides, hostile YAML."""

from __future__ import annotations

import os
import re
from pathlib import Path

import msgspec
import pytest

from vetting_core.config import ConfigError, Settings, load_settings, settings_from_dict
from vetting_core.plugins import load_registry
from vetting_core.safeyaml import MAX_DEPTH, YamlError, load_yaml

DOCS = Path(__file__).resolve().parents[2] / "docs"


def write(tmp_path, text, name="vetting.yaml"):
    p = tmp_path / name
    p.write_text(text) if isinstance(text, str) else p.write_bytes(text)
    return p


def error(tmp_path, text, environ=None):
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, text), environ=environ or {})
    return str(err.value)


def test_defaults_without_a_file_and_with_an_empty_one(tmp_path):
    s = load_settings(environ={})
    assert s == Settings()
    assert (s.server.port, s.dispatcher.concurrency, s.database.url) == (8080, 3, "sqlite:///./var/vetting.db")
    assert load_settings(write(tmp_path, ""), environ={}) == Settings()
    assert load_settings(write(tmp_path, "# only a comment\n"), environ={}) == Settings()


def test_values_from_the_file(tmp_path):
    s = load_settings(write(tmp_path, "server:\n  port: 9000\nplugins:\n  disable: [gpu]\n"), environ={})
    assert s.server.port == 9000 and s.plugins.disable == ["gpu"]
    assert s.server.host == "127.0.0.1"  # untouched keys keep their default


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("server:\n  prot: 1\n", "unknown field `prot` - at `$.server`"),
        ("sever:\n  port: 1\n", "unknown field `sever`"),
        ("server:\n  port: abc\n", "Expected `int`, got `str` - at `$.server.port`"),
        ("server: 8080\n", "Expected `object`, got `int` - at `$.server`"),
        ("logging:\n  level: loud\n", "at `$.logging.level`"),
        ("notifications:\n  targets:\n    - name: a\n", "missing required field `kind` - at `$.notifications.targets[0]`"),
        ("notifications:\n  targets:\n    - {name: a, kind: ntfy, retries: many}\n",
         "at `$.notifications.targets[0].retries`"),
        ("dispatcher:\n  concurrency: 0\n", "$.dispatcher.concurrency must be at least 1"),
        ("server:\n  port: 70000\n", "$.server.port must be between 0 and 65535, got 70000"),
        ("timeouts:\n  boot_s: -1\n", "$.timeouts.boot_s must be at least 1"),
        ("timeouts:\n  heartbeat_timeout_s: 5\n", "$.timeouts.heartbeat_timeout_s must be longer"),
        ("database:\n  pool_min: 5\n  pool_max: 2\n", "$.database.pool_min (5) is larger than $.database.pool_max (2)"),
    ],
)
def test_wrong_key_or_value_names_the_key(tmp_path, text, expected):
    msg = error(tmp_path, text)
    assert expected in msg
    assert msg.startswith(str(tmp_path / "vetting.yaml"))


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mysql://db/vetting", "must start with sqlite:/// or postgresql://"),
        ("vetting.db", "must start with sqlite:/// or postgresql://"),
        ("", "must start with sqlite:/// or postgresql://"),
        ("http://x", "must start with sqlite:/// or postgresql://"),
        ("sqlite://var/x.db", "is not a SQLite file URL: write sqlite:///relative/path.db"),
        ("sqlite:///", "is not a SQLite file URL"),
        ("sqlite:///:memory:", "is not a SQLite file URL"),
        ("postgresql://vetting@db:5432", "names no database: write postgresql://user@host:5432/database"),
        ("postgresql://vetting@db:port/x", "Port could not be cast to integer value"),
    ],
)
def test_invalid_database_url(tmp_path, url, expected):
    """A URL the server cannot open is refused when the configuration is read, with the
    right form in the message (it used to pass and fail at open with a traceback)."""
    msg = error(tmp_path, f"database:\n  url: {url!r}\n")
    assert "$.database.url" in msg and expected in msg


@pytest.mark.parametrize("url", ["sqlite:///var/x.db", "sqlite:////abs/x.db", "postgresql://u:p@h:5432/d", "postgres:///d"])
def test_valid_database_urls(tmp_path, url):
    p = tmp_path / "vetting.yaml"
    p.write_text(f"database:\n  url: {url!r}\n")
    assert load_settings(p).database.url == url


def test_notification_route_to_unknown_target(tmp_path):
    text = """
notifications:
  targets:
    - {name: push, kind: ntfy, config: {url: "https://ntfy.example/x"}}
  routes:
    - {events: ["*"], targets: [push]}
    - {events: [RunFailed], targets: [push, pager]}
"""
    msg = error(tmp_path, text)
    assert "$.notifications.routes[1].targets: unknown target 'pager' (defined: ['push'])" in msg


def test_notification_unknown_event_and_duplicate_target(tmp_path):
    text = "notifications:\n  targets: [{name: a, kind: ntfy}]\n  routes: [{events: [RunExploded], targets: [a]}]\n"
    assert "routes[0].events: unknown event 'RunExploded'" in error(tmp_path, text)
    text = "notifications:\n  targets: [{name: a, kind: ntfy}, {name: a, kind: smtp}]\n"
    assert "duplicate target name(s) ['a']" in error(tmp_path, text)


def test_environment_overrides(tmp_path):
    path = write(tmp_path, "server:\n  port: 9000\n  host: 0.0.0.0\n")
    env = {
        "VETTING__SERVER__PORT": "9090",
        "VETTING__DISPATCHER__CONCURRENCY": "5",
        "VETTING__PLUGINS__DISABLE": "[gpu, psu]",
        "VETTING__HOLD__ENABLED": "false",
        "VETTING__SERVER__PUBLIC_URL": "http://vetting.lab:9090",
        "VETTING__PXE__CMDLINE_EXTRA": "console=ttyS1: quiet",  # parses as a mapping: kept as text
        "VETTING__database__url": "postgresql://vetting@db:5432/vetting",  # case-insensitive keys
        "VETTING_DISABLE_PLUGINS": "ignored-here",  # one underscore: the plugin manager's, not config
        "OTHER": "x",
    }
    s = load_settings(path, environ=env)
    assert s.server.port == 9090 and s.server.host == "0.0.0.0"
    assert s.dispatcher.concurrency == 5
    assert s.plugins.disable == ["gpu", "psu"]
    assert s.hold.enabled is False
    assert s.server.public_url == "http://vetting.lab:9090"
    assert s.pxe.cmdline_extra == "console=ttyS1: quiet"
    assert s.database.url == "postgresql://vetting@db:5432/vetting"
    # without a file
    assert load_settings(environ={"VETTING__SERVER__PORT": "1234"}).server.port == 1234


def test_environment_override_errors_name_the_variable(tmp_path):
    path = write(tmp_path, "server:\n  port: 9000\n")
    with pytest.raises(ConfigError) as err:
        load_settings(path, environ={"VETTING__SERVER__PORT": "eighty"})
    assert "$VETTING__SERVER__PORT" in str(err.value) and "$.server.port" in str(err.value)
    with pytest.raises(ConfigError, match="unknown field `colour`"):
        load_settings(path, environ={"VETTING__LOGGING__COLOUR": "yes"})
    with pytest.raises(ConfigError, match="conflicts with another"):
        load_settings(path, environ={"VETTING__SERVER": "x", "VETTING__SERVER__PORT": "1"})


def test_process_environment_is_the_default(tmp_path, monkeypatch):
    monkeypatch.setenv("VETTING__SERVER__PORT", "4321")
    assert load_settings(write(tmp_path, "")).server.port == 4321


def test_unreadable_file(tmp_path):
    with pytest.raises(ConfigError, match=r"cannot read configuration file .*missing.yaml: No such file"):
        load_settings(tmp_path / "missing.yaml", environ={})
    with pytest.raises(ConfigError, match="Is a directory"):
        load_settings(tmp_path, environ={})
    if os.geteuid() != 0:  # root reads anything
        p = write(tmp_path, "server: {}\n")
        p.chmod(0)
        with pytest.raises(ConfigError, match="Permission denied"):
            load_settings(p, environ={})


def test_binary_garbage_file(tmp_path):
    msg = error(tmp_path, b"server:\n  host: \xc3\x28\xff\x00\n")
    assert "not valid YAML" in msg


# -- hostile YAML -------------------------------------------------------------------

BILLION_LAUGHS = """
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("billion laughs", BILLION_LAUGHS, r"YAML anchors are not allowed \(line 2\): '&a'"),
        ("anchor", "server: &s\n  port: 1\n", "YAML anchors are not allowed"),
        ("alias", "notifications:\n  targets: *t\n", r"YAML aliases are not allowed \(line 2\).*'\*t'"),
        ("merge key", "server:\n  <<: {port: 1}\n", "mapping keys must be plain strings"),
        ("2 MiB document", "server:\n  cmdline: '" + "x" * (2 << 20) + "'\n", r"is \d+ bytes; the limit is 1048576"),
        ("100-level nesting", "a:\n" + "".join("  " * (i + 1) + f"k{i}:\n" for i in range(100)),
         f"YAML nested deeper than {MAX_DEPTH} levels"),
        ("100-level flow nesting", "a: " + "[" * 100 + "]" * 100 + "\n", f"nested deeper than {MAX_DEPTH}"),
        ("integer key", "server:\n  1: 2\n", r"mapping keys must be plain strings, got '1' \(line 2\)"),
        ("boolean key", "yes: 1\n", "mapping keys must be plain strings, got 'yes'"),
        ("null key", "~: 1\n", "mapping keys must be plain strings"),
        ("complex key", "? [a, b]\n: 1\n", "mapping keys must be plain strings"),
        ("duplicate key", "server:\n  port: 1\n  port: 2\n", r"duplicate key 'port' \(lines 2 and 3\)"),
        ("top-level list", "- server\n- database\n", "the top level must be a mapping of sections"),
        ("top-level scalar", "just text\n", "the top level must be a mapping of sections"),
        ("python object", "server: !!python/object/apply:os.system ['touch /tmp/pwned']\n",
         "could not determine a constructor"),
        ("two documents", "server: {}\n---\nserver: {}\n", "not valid YAML"),
    ],
)
def test_hostile_yaml_is_rejected(tmp_path, name, text, expected):
    assert re.search(expected, error(tmp_path, text)), name


def test_huge_file_is_not_read_whole(tmp_path):
    p = tmp_path / "huge.yaml"
    with p.open("wb") as fh:  # a sparse 1 GiB file: refused after reading 1 MiB + 1 byte
        fh.truncate(1 << 30)
    with pytest.raises(ConfigError, match=r"is 1048577 bytes; the limit is 1048576"):
        load_settings(p, environ={})


def test_safe_yaml_int_keys_allowed_for_tool_reports():
    assert load_yaml("0: a\n1: b\n") == {0: "a", 1: "b"}
    with pytest.raises(YamlError, match="plain strings"):
        load_yaml("0: a\n", int_keys=False)
    with pytest.raises(YamlError, match="duplicate key 0"):
        load_yaml("0: a\n0: b\n")


def test_example_config_in_docs_parses_and_its_targets_are_valid():
    s = load_settings(DOCS / "configuration.example.yaml", environ={})
    assert s.dispatcher.concurrency == 6 and s.pxe.enabled
    assert {t.kind for t in s.notifications.targets} == {"ntfy", "discord", "smtp", "webhook"}
    # each target's config is valid for the installed notifier plugin of its kind
    reg = load_registry(environ={})
    for t in s.notifications.targets:
        spec = reg.notifiers[t.kind]
        if spec.config_type is not None:
            msgspec.convert(t.config, spec.config_type)
    assert settings_from_dict(msgspec.to_builtins(s)) == s


def test_reference_documents_every_key():
    text = (DOCS / "configuration.md").read_text()

    def walk(struct, prefix):
        for field in msgspec.structs.fields(struct):
            sub = field.type
            if isinstance(sub, type) and issubclass(sub, msgspec.Struct):
                yield from walk(sub, f"{field.name}")
            else:
                yield prefix, field.name

    from vetting_core.config import NotifyRoute, NotifyTarget

    keys = list(walk(Settings, "")) + [("targets", f.name) for f in msgspec.structs.fields(NotifyTarget)]
    keys += [("routes", f.name) for f in msgspec.structs.fields(NotifyRoute)]
    for section, key in keys:
        if section and key not in ("targets", "routes"):
            assert f"| `{key}` |" in text, f"{section}.{key} is not in docs/configuration.md"
        if section:
            assert f"`{section}`" in text
