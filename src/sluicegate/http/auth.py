"""Bearer-token authentication of the HTTP API.

Tokens come from the ``SLUICEGATE_API_TOKENS`` environment variable, a
comma-separated list of ``TOKEN:SCOPE`` pairs, for example
``SLUICEGATE_API_TOKENS="k3y-for-ci:write,k3y-for-grafana:read"``. The scope
``read`` allows every ``GET``; ``write`` allows everything, reads included.
A request without a valid token gets 401 and one whose token lacks the
scope gets 403. Without tokens the server accepts every request, so
``sluicegate serve`` then binds to a loopback address only.

Tokens are compared in constant time and never logged.
"""

from __future__ import annotations

import enum
import hmac
import ipaddress
from collections.abc import Callable, Mapping
from typing import Annotated

from fastapi import Depends, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from sluicegate.errors import ConfigurationError

#: The environment variable that contains the API tokens.
TOKENS_VARIABLE = "SLUICEGATE_API_TOKENS"


class Scope(enum.Enum):
    """A token's permission. ``write`` implies ``read``."""

    READ = "read"
    WRITE = "write"


def parse_tokens(text: str | None) -> dict[str, Scope]:
    """Parse ``TOKEN:SCOPE,TOKEN:SCOPE`` into a token-to-scope map.

    An empty or missing value means no tokens. Raises ``ConfigurationError``
    for an entry without a scope, an unknown scope or a token given twice.
    The message names the entry's position, never the token itself.
    """
    tokens: dict[str, Scope] = {}
    if not text or not text.strip():
        return tokens
    for position, entry in enumerate(text.split(","), start=1):
        token, _, scope = entry.strip().rpartition(":")
        if not token or scope not in ("read", "write"):
            raise ConfigurationError(
                f"{TOKENS_VARIABLE} entry {position} is invalid; each entry must be "
                "TOKEN:read or TOKEN:write, separated by commas"
            )
        if token in tokens:
            raise ConfigurationError(f"{TOKENS_VARIABLE} entry {position} repeats a token")
        tokens[token] = Scope(scope)
    return tokens


def is_loopback(host: str) -> bool:
    """Return whether ``host`` names a loopback address (``localhost``, 127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_bearer = HTTPBearer(auto_error=False, description="TOKEN from SLUICEGATE_API_TOKENS")


def requirement(tokens: Mapping[str, Scope], scope: Scope) -> Callable[..., None]:
    """Return a FastAPI dependency that demands a token with ``scope``.

    With no tokens configured, the dependency lets every request through.
    """

    def check(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> None:
        if not tokens:
            return
        granted = _scope_of(tokens, credentials.credentials if credentials else "")
        if granted is None:
            raise HTTPException(
                401,
                "missing or invalid bearer token; send Authorization: Bearer TOKEN",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if scope is Scope.WRITE and granted is not Scope.WRITE:
            raise HTTPException(403, "this token has the read scope; this request needs write")

    return check


def _scope_of(tokens: Mapping[str, Scope], presented: str) -> Scope | None:
    found = None
    for token, scope in tokens.items():
        # Compare against every token so the time taken does not reveal which one matched.
        if hmac.compare_digest(token.encode(), presented.encode()):
            found = scope
    return found
