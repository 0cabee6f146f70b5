"""What every boot provider shares: the errors a run shows, secrets by reference, retries.

A provider's error becomes the failed run's ``reason``, so it must say what an
operator can act on: *which* BMC, and whether it was unreachable, refused the
credentials, or refused the action. Three subclasses of :class:`BootError` carry that
distinction; ``transient`` says whether trying again can help (a BMC that did not
answer may answer in a second; a wrong password stays wrong — and retrying it can
lock the account).

Passwords never sit in a host's ``boot_config`` (it is stored in the database and
shown by the API): the config names an environment variable of the server process or
a file the server can read, and :func:`read_secret` fetches it when it is needed.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import anyio
import msgspec
import structlog

log = structlog.get_logger()

T = TypeVar("T")


class BootError(RuntimeError):
    """A provider could not do what it was asked; ``str(exc)`` is the run's reason."""

    transient = False

    def __init__(self, message: str, *, transient: bool | None = None) -> None:
        super().__init__(message)
        if transient is not None:
            self.transient = transient


class BmcUnreachable(BootError):
    """No answer (timeout, connection refused, name not found): worth retrying."""

    transient = True


class BmcAuthFailed(BootError):
    """The BMC rejected the user name or password. Never retried."""


class BmcRefused(BootError):
    """The BMC answered but refused the action (privilege, unsupported, busy)."""


def read_secret(*, env: str | None, file: str | None, what: str) -> str:
    """The secret named by an environment variable *or* a file (first line, stripped).

    Raises :class:`BootError` naming the reference, never the value."""
    if env:
        value = os.environ.get(env)
        if not value:
            raise BootError(f"{what}: environment variable {env} is not set in the server's environment")
        return value
    if file:
        try:
            text = Path(file).read_text(encoding="utf-8")
        except OSError as exc:
            raise BootError(f"{what}: cannot read {file}: {exc.strerror or exc}") from None
        value = text.splitlines()[0].strip() if text.strip() else ""
        if not value:
            raise BootError(f"{what}: {file} is empty")
        return value
    raise BootError(f"{what}: no password reference (set password_env or password_file)")


def check_secret_reference(env: str | None, file: str | None, plaintext: str | None) -> None:
    """For a config's ``__post_init__``: exactly one reference, and no plaintext.

    Raises ``msgspec.ValidationError`` (the API answers 422 naming the field)."""
    if plaintext is not None:
        raise msgspec.ValidationError(
            "a password is never stored in a host's boot_config: put it in an environment variable "
            "of the server (password_env) or a file only the server can read (password_file) - at `$.password`"
        )
    if bool(env) == bool(file):
        raise msgspec.ValidationError("give exactly one of password_env and password_file - at `$.password_env`")


def check_limits(attempts: int, timeout_s: float) -> None:
    """For a config's ``__post_init__``: a provider's ``attempts`` and ``timeout_s``."""
    if not 1 <= attempts <= 10:
        raise msgspec.ValidationError("attempts must be between 1 and 10 - at `$.attempts`")
    if not 1 <= timeout_s <= 600:
        raise msgspec.ValidationError("timeout_s must be between 1 and 600 - at `$.timeout_s`")


async def with_retries(
    action: Callable[[], Awaitable[T]],
    *,
    attempts: int,
    first_delay_s: float = 1.0,
    max_delay_s: float = 30.0,
    what: str = "boot provider",
) -> T:
    """Run ``action``; when it raises a *transient* :class:`BootError`, wait and try
    again (the delay doubles, up to ``max_delay_s``), ``attempts`` times in all. The
    last error is raised with the number of attempts appended."""
    delay = first_delay_s
    for attempt in range(1, max(1, attempts) + 1):
        try:
            return await action()
        except BootError as exc:
            if not exc.transient or attempt >= attempts:
                if attempt > 1:
                    raise type(exc)(f"{exc} (after {attempt} attempts)", transient=exc.transient) from None
                raise
            log.warning("boot.retry", what=what, attempt=attempt, error=str(exc), retry_in_s=delay)
            await anyio.sleep(delay)
            delay = min(max_delay_s, delay * 2)
    raise AssertionError("unreachable")
