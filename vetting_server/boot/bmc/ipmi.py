"""The ``ipmi`` boot provider: ipmitool over the LAN to the host's BMC.

Every action is one ``ipmitool -I lanplus … chassis …`` call, run like any other tool
(:func:`vetting_core.tools.run_tool`: ``LC_ALL=C``, no stdin, a timeout). The password
goes to ipmitool in its environment (``-E`` reads ``IPMI_PASSWORD``), never in the argv
that ``ps`` shows; the config only says where to read it (``password_env`` or
``password_file``). The exit code is not trusted alone: each action's confirmation
line is parsed (``Chassis Power Control: Up/On``, ``Set Boot Device to pxe``), and a
failure is classified from ipmitool's verbose (``-v``) diagnostics, which is the only
place it tells a wrong password from a BMC that does not answer (captures under
``tests/fixtures/ipmitool/1.8.19/lanplus-*``).

Booting is "next boot from PXE, then power": ``chassis bootdev pxe`` (with
``options=efiboot`` for UEFI hosts) sets the one-time boot flags, then ``power on``
if the chassis is off or ``power cycle`` if it is on — what Wake-on-LAN cannot do.
After the verdict ``chassis bootdev none`` clears the override (a BMC clears a
one-time flag itself once it is used; this covers a host that never booted).

``cipher_suite`` is left to ipmitool by default: it asks the BMC (Get Channel Cipher
Suites) and picks the strongest it offers. OpenIPMI's ``ipmi_sim`` cannot answer
that question (ipmitool then waits 10 s per call) and lacks suite 17, so its tests
set ``cipher_suite: 3``.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import msgspec

from vetting_core import BmcAuthFailed, BmcRefused, BmcUnreachable, BootError, BootProviderSpec, hookimpl
from vetting_core.boot import check_limits, check_secret_reference, read_secret, with_retries
from vetting_core.tools import ToolNotFound, ToolResult, run_tool

_ADDRESS = re.compile(r"^[A-Za-z0-9.:_\[\]-]+$")


class IpmiConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    address: str  # the BMC's IP address or host name
    username: str
    password_env: str | None = None  # an environment variable of the server holding the password
    password_file: str | None = None  # or a file (first line) only the server can read
    password: str | None = None  # refused with a message: never stored in boot_config
    port: int = 623
    interface: Literal["lanplus", "lan"] = "lanplus"
    cipher_suite: int | None = None  # None: ipmitool asks the BMC for the strongest
    privilege: Literal["ADMINISTRATOR", "OPERATOR"] = "ADMINISTRATOR"
    efiboot: bool = False  # the host boots UEFI: bootdev pxe options=efiboot
    timeout_s: float = 30.0  # one ipmitool call
    attempts: int = 3  # tries for a BMC that does not answer (1 s, 2 s, 4 s… apart)
    ipmitool: str = "ipmitool"

    def __post_init__(self) -> None:
        check_secret_reference(self.password_env, self.password_file, self.password)
        if not _ADDRESS.match(self.address) or self.address.startswith("-"):
            raise msgspec.ValidationError(f"address {self.address!r} is not a host name or IP address - at `$.address`")
        if not 0 < self.port < 65536:
            raise msgspec.ValidationError(f"port {self.port} out of range - at `$.port`")
        if self.cipher_suite is not None and not 0 <= self.cipher_suite <= 255:
            raise msgspec.ValidationError(f"cipher_suite {self.cipher_suite} out of range - at `$.cipher_suite`")
        check_limits(self.attempts, self.timeout_s)


def ipmitool_argv(c: IpmiConfig, *command: str) -> list[str]:
    """The argv for one call; the password is *not* in it (``-E``: from the environment)."""
    argv = [c.ipmitool, "-I", c.interface, "-H", c.address, "-p", str(c.port), "-U", c.username, "-E",
            "-L", c.privilege, "-N", "1", "-R", "2", "-v"]
    if c.cipher_suite is not None:
        argv += ["-C", str(c.cipher_suite)]
    return [*argv, *command]


# ---------------------------------------------------------------- parsers (pure)
_POWER_IS = re.compile(r"^Chassis Power is (on|off)\s*$", re.MULTILINE)
_POWER_CONTROL = re.compile(r"^Chassis Power Control: (\S+)\s*$", re.MULTILINE)
_BOOTDEV = re.compile(r"^Set Boot Device to (\S+)\s*$", re.MULTILINE)


def parse_power_status(stdout: str) -> str | None:
    """``on``/``off`` from ``chassis power status``; None when the line is missing."""
    m = _POWER_IS.search(stdout)
    return m.group(1) if m else None


def parse_power_control(stdout: str) -> str | None:
    """What ``chassis power on/off/cycle`` confirmed: ``Up/On``, ``Down/Off``, ``Cycle``…"""
    m = _POWER_CONTROL.search(stdout)
    return m.group(1) if m else None


def parse_bootdev(stdout: str) -> str | None:
    """The device ``chassis bootdev`` confirmed (``pxe``, ``none``…)."""
    m = _BOOTDEV.search(stdout)
    return m.group(1) if m else None


# (pattern in ipmitool's verbose stderr, error class, what it means)
_FAILURES: list[tuple[re.Pattern[str], type[BootError], str]] = [
    (re.compile(r"RAKP 2 HMAC is invalid"), BmcAuthFailed, "authentication failed: wrong password"),
    (re.compile(r"unauthorized name"), BmcAuthFailed, "authentication failed: unknown user name"),
    (re.compile(r"Unable to read password"), BootError, "ipmitool could not read the password"),
    (re.compile(r"invalid authentication algorithm|no matching cipher suite", re.I), BmcRefused,
     "the BMC does not offer this cipher suite (set cipher_suite, e.g. 3 or 17)"),
    (re.compile(r"Insufficient privilege level"), BmcRefused,
     "action refused: insufficient privilege (the user needs OPERATOR or ADMINISTRATOR)"),
    (re.compile(r"Node busy", re.I), BmcRefused, "action refused for now: the BMC is busy"),
    (re.compile(r"Address lookup for \S+ failed"), BmcUnreachable, "unreachable: the name does not resolve"),
    (re.compile(r"Get Auth Capabilities error|No response from remote controller|Could not open socket|"
                r"Error issuing Get Channel Authentication Capabilities"), BmcUnreachable, "unreachable: no answer"),
]


def classify_failure(result: ToolResult, where: str, action: str) -> BootError:
    """The error for a failed ipmitool call, from its verbose stderr (pure)."""
    if result.timed_out:
        return BmcUnreachable(f"BMC {where} unreachable: ipmitool {action} got no answer within {result.duration_s:.0f}s")
    text = result.stderr
    for pattern, cls, meaning in _FAILURES:
        if pattern.search(text):
            # a busy BMC is worth asking again; every other refusal stays refused
            return cls(f"BMC {where} {meaning} ({action})", transient=cls.transient or "busy" in meaning)
    last = next((ln.strip() for ln in reversed(text.splitlines()) if ln.strip()), f"exit status {result.returncode}")
    return BmcRefused(f"BMC {where} refused {action}: {last[:300]}")


class IpmiBoot:
    def __init__(self, config: IpmiConfig) -> None:
        self.c = config
        self.where = f"{config.address}" + (f":{config.port}" if config.port != 623 else "")

    async def _call(self, *command: str) -> str:
        action = " ".join(command)
        password = read_secret(env=self.c.password_env, file=self.c.password_file, what=f"BMC {self.where}")
        try:
            result = await run_tool(ipmitool_argv(self.c, *command), timeout=self.c.timeout_s,
                                    env={"IPMI_PASSWORD": password})
        except ToolNotFound as exc:
            raise BootError(f"{exc} (apt-get install ipmitool)") from None
        if result.timed_out or result.returncode != 0:
            raise classify_failure(result, self.where, action)
        return result.stdout

    async def ipmitool(self, *command: str) -> str:
        """One chassis command, retried with backoff while the BMC does not answer."""
        return await with_retries(lambda: self._call(*command), attempts=self.c.attempts,
                                  what=f"ipmi {self.where}")

    def _expect(self, stdout: str, parsed: str | None, wanted: str, action: str) -> None:
        if parsed is None or parsed.lower() != wanted.lower():
            raise BmcRefused(f"BMC {self.where}: {action} not confirmed (ipmitool said {stdout.strip()[:200]!r})")

    async def power_state(self, host: Any = None) -> str:
        out = await self.ipmitool("chassis", "power", "status")
        state = parse_power_status(out)
        if state is None:
            raise BmcRefused(f"BMC {self.where}: unexpected power status {out.strip()[:200]!r}")
        return state

    async def set_next_boot(self, device: str) -> None:
        command = ["chassis", "bootdev", device]
        if device == "pxe" and self.c.efiboot:
            command.append("options=efiboot")
        out = await self.ipmitool(*command)
        self._expect(out, parse_bootdev(out), device, " ".join(command))

    async def power(self, action: Literal["on", "off", "cycle", "reset"]) -> None:
        out = await self.ipmitool("chassis", "power", action)
        wanted = {"on": "Up/On", "off": "Down/Off", "cycle": "Cycle", "reset": "Reset"}[action]
        self._expect(out, parse_power_control(out), wanted, f"chassis power {action}")

    async def power_on(self, host: Any = None, *, boot_target: str = "pxe") -> str:
        if boot_target != "pxe":
            raise BmcRefused(f"the ipmi provider boots from the network only, not {boot_target!r}")
        await self.set_next_boot("pxe")
        was = await self.power_state()
        await self.power("cycle" if was == "on" else "on")
        mode = "UEFI" if self.c.efiboot else "legacy BIOS"
        done = "power cycled (it was on)" if was == "on" else "powered on"
        return f"IPMI {self.where}: next boot from PXE ({mode}); {done}"

    async def power_off(self, host: Any = None) -> str:
        if await self.power_state() == "off":
            return f"IPMI {self.where}: already off"
        await self.power("off")
        return f"IPMI {self.where}: powered off"

    async def clear_boot_override(self, host: Any = None) -> str:
        await self.set_next_boot("none")
        return f"IPMI {self.where}: boot override cleared"


@hookimpl
def vetting_boot_providers():
    return [
        BootProviderSpec(
            kind="ipmi",
            factory=IpmiBoot,
            config_type=IpmiConfig,
            description="IPMI over the LAN (ipmitool): one-time PXE boot, power on/cycle/off",
        )
    ]
