"""Bearer-token authentication of the HTTP API.

Tokens come from the ``SLUICEGATE_API_TOKENS`` environment variable, a
comma-separated list of ``TOKEN:SCOPE`` pairs, for example
``SLUICEGATE_API_TOKENS="k3y-for-ci:write,k3y-for-grafana:read"``. The scope
``read`` allows every ``GET``; ``write`` allows everything, reads included.
A request without a valid token gets 401 and one whose token lacks the
scope gets 403. Without tokens the server accepts every request, so
``sluicegate serve`` then binds to a loopback address only.

Routes built by :class:`AuthenticatedRoute` check the token before the
request body is read, so a request without a valid token gets 401 even
when its body is malformed or incomplete.

Tokens are compared in constant time and never logged.
"""

from __future__ import annotations

import enum
import hmac
import ipaddress
from collections.abc import Callable, Coroutine, Mapping
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, Response
from fastapi.routing import APIRoute
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


class TokenRequirement:
    """A FastAPI dependency that demands a bearer token with ``scope``.

    With no tokens configured, it lets every request through. It is a coroutine
    function because FastAPI runs a plain function dependency on a worker
    thread, a hop that costs more than the check.
    """

    def __init__(self, tokens: Mapping[str, Scope], scope: Scope) -> None:
        self.tokens = tokens
        self.scope = scope

    async def __call__(
        self,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> None:
        self.verify(credentials)

    def verify(self, credentials: HTTPAuthorizationCredentials | None) -> None:
        """Raise ``HTTPException`` 401 for a missing or unknown token, 403 for a lacking scope."""
        if not self.tokens:
            return
        granted = _scope_of(self.tokens, credentials.credentials if credentials else "")
        if granted is None:
            raise HTTPException(
                401,
                "missing or invalid bearer token; send Authorization: Bearer TOKEN",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if self.scope is Scope.WRITE and granted is not Scope.WRITE:
            raise HTTPException(403, "this token has the read scope; this request needs write")


async def bearer_credentials(request: Request) -> HTTPAuthorizationCredentials | None:
    """Return the request's bearer credentials, or None without an ``Authorization: Bearer``."""
    return await _bearer(request)


def requirement(tokens: Mapping[str, Scope], scope: Scope) -> TokenRequirement:
    """Return a FastAPI dependency that demands a token with ``scope``."""
    return TokenRequirement(tokens, scope)


class AuthenticatedRoute(APIRoute):
    """An ``APIRoute`` that checks its :class:`TokenRequirement` before reading the body.

    FastAPI reads and parses a route's body before it solves the route's
    dependencies, so without this a malformed body would get 422 before the
    token is checked. The dependency still runs afterwards and still
    declares the bearer scheme in the OpenAPI document.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        requirements = [
            dependency.dependency
            for dependency in self.dependencies
            if isinstance(dependency.dependency, TokenRequirement) and dependency.dependency.tokens
        ]
        if not requirements:
            return handler

        async def authenticated(request: Request) -> Response:
            credentials = await bearer_credentials(request)
            for required in requirements:
                required.verify(credentials)
            return await handler(request)

        return authenticated


def _scope_of(tokens: Mapping[str, Scope], presented: str) -> Scope | None:
    found = None
    for token, scope in tokens.items():
        # Compare against every token so the time taken does not reveal which one matched.
        if hmac.compare_digest(token.encode(), presented.encode()):
            found = scope
    return found
