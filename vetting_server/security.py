"""Secrets: run/host/API tokens and operator passwords.

Tokens are 256 bits from :mod:`secrets` (``token_urlsafe(32)``); only their SHA-256
is stored. A fast hash is right for tokens (they are random, nothing to brute-force)
and keeps the heartbeat path cheap; comparisons use :func:`hmac.compare_digest`.

Passwords are people's and get argon2id (``argon2-cffi``) with OWASP's parameters
(19 MiB of memory, 2 iterations, 1 lane: ~30 ms here). Hashes written before it are
scrypt (``scrypt$N$r$p$salt$key``, N=2**14): still verified, and :func:`verify_password`
says when a hash should be replaced, which the login does with the password it was
given (transparent rehash). Both are slow on purpose: callers run them in a worker
thread (:mod:`.api.login`), never on the event loop that answers heartbeats.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError

TOKEN_BYTES = 32  # 256 bits
# OWASP Password Storage Cheat Sheet, argon2id: m=19 MiB, t=2, p=1
_ARGON2 = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1, hash_len=32, salt_len=16, type=Type.ID)


def new_token(prefix: str = "") -> str:
    return prefix + secrets.token_urlsafe(TOKEN_BYTES)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_matches(token: str, stored_hash: str | None) -> bool:
    if not stored_hash:
        return False
    return hmac.compare_digest(token_hash(token), stored_hash)


def hash_password(password: str) -> str:
    return _ARGON2.hash(password)


def verify_password(password: str, stored: str | None) -> tuple[bool, bool]:
    """(matches, should be rehashed): a scrypt hash, or argon2 with other parameters."""
    if not stored:
        return False, False
    if stored.startswith("scrypt$"):
        return _verify_scrypt(password, stored), True
    try:
        _ARGON2.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return False, False
    return True, _ARGON2.check_needs_rehash(stored)


def _verify_scrypt(password: str, stored: str) -> bool:
    try:
        _, n, r, p, salt, dk = stored.split("$")
        expected = base64.b64decode(dk)
        got = hashlib.scrypt(
            password.encode(), salt=base64.b64decode(salt), dklen=len(expected), n=int(n), r=int(r), p=int(p)
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected)
