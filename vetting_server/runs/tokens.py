"""Run tokens: the bearer an agent presents for its own run, and nothing else.

A run's token is issued in three places (the operator starts the run, the iPXE script
of a netbooted host carries a fresh one, a host-mode agent asks for one) and always
here: only its SHA-256 is stored (``runs.agent_token_hash``); the token itself is
handed out once. The first ``/hello`` then binds it to the agent that said it.
"""

from __future__ import annotations

from ..security import new_token, token_hash

RUN_TOKEN_PREFIX = "vr_"


def issue_run_token() -> tuple[str, str]:
    """A new run token and the hash to store for it."""
    token = new_token(RUN_TOKEN_PREFIX)
    return token, token_hash(token)
