"""A route class for the API's busiest endpoint: it parses the JSON body itself.

FastAPI's generic request handler parses a JSON body with the json module,
solves the route's dependencies and validates the returned value. For a
plain function it also runs each dependency, the endpoint and that check
on worker threads, one hop each. :class:`JsonBodyRoute` keeps the route's
declaration, so the OpenAPI document does not change, and replaces only
the handler: it checks the bearer token, parses the body with orjson,
validates it with the route's model and awaits the endpoint.

Requests get the responses that FastAPI's handler gives them, errors
included. A body that does not fit the model gets 422 with ``loc``
``["body", ...]``. Malformed JSON gets ``json_invalid`` at ``["body",
POSITION]``, an empty body ``missing`` at ``["body"]``, and a body whose
content type is not JSON the model's error for a value that is not an object.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Coroutine
from typing import Any, cast

import orjson
from fastapi import HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect

from sluicegate.http.auth import AuthenticatedRoute, TokenRequirement, bearer_credentials

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


class JsonBodyRoute(AuthenticatedRoute):
    """An ``APIRoute`` whose handler parses the JSON body and awaits the endpoint directly.

    The endpoint must be a coroutine function that returns a ``Response``.
    Its parameters must be ``str`` path parameters without constraints and
    one body parameter of a pydantic model, and the route's dependencies may
    only be :class:`~sluicegate.http.auth.TokenRequirement`. Building the
    handler raises ``TypeError`` for parameters or dependencies of any other
    kind, because this handler would skip what it does not know.
    """

    def get_route_handler(self) -> Handler:
        endpoint = self.endpoint
        dependant = self.dependant
        _check_route(self.path, endpoint, dependant)
        requirements = [
            sub.call
            for sub in dependant.dependencies
            if isinstance(sub.call, TokenRequirement) and sub.call.tokens
        ]
        path_names = [param.name for param in dependant.path_params]
        (body_param,) = dependant.body_params
        body_name = body_param.name
        model = cast(type[BaseModel], body_param.field_info.annotation)

        async def handle(request: Request) -> Response:
            if requirements:
                credentials = await bearer_credentials(request)
                for required in requirements:
                    required.verify(credentials)
            values: dict[str, Any] = {name: request.path_params[name] for name in path_names}
            values[body_name] = await read_model(request, model)
            response: Response = await endpoint(**values)
            return response

        return handle


async def read_model(request: Request, model: type[BaseModel]) -> BaseModel:
    """Read the request body and validate it as ``model``, as FastAPI's handler would.

    Raises ``RequestValidationError`` (422) for a body that is empty, not JSON
    or does not fit the model, and ``HTTPException`` 400 for a body that is
    not valid text or whose client disconnected.
    """
    try:
        raw = await request.body()
    except ClientDisconnect:
        raise HTTPException(400, "There was an error parsing the body") from None
    if not raw:
        raise RequestValidationError(
            [{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}]
        )
    content: Any = _parse_json(raw) if _is_json(request.headers.get("content-type")) else raw
    try:
        # FastAPI validates with from_attributes=True, so a body that is not an object
        # gets the same error (model_attributes_type) here as there.
        return model.model_validate(content, from_attributes=True)
    except ValidationError as exc:
        errors = [
            {**error, "loc": ("body", *error["loc"])} for error in exc.errors(include_url=False)
        ]
        raise RequestValidationError(errors) from None


def _parse_json(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    # orjson rejects some bodies that the json module (and so FastAPI) accepts:
    # NaN and Infinity, integers beyond 64 bits, a byte order mark, UTF-16 and
    # UTF-32. Those parse here, and real errors get FastAPI's error body.
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise RequestValidationError(
            [
                {
                    "type": "json_invalid",
                    "loc": ("body", exc.pos),
                    "msg": "JSON decode error",
                    "input": {},
                    "ctx": {"error": exc.msg},
                }
            ]
        ) from None
    except UnicodeDecodeError:
        raise HTTPException(400, "There was an error parsing the body") from None


def _is_json(content_type: str | None) -> bool:
    """Return whether a ``Content-Type`` is ``application/json`` or ``application/*+json``."""
    if not content_type:
        return False
    media_type = content_type.split(";", 1)[0].strip().lower()
    main_type, _, subtype = media_type.partition("/")
    return main_type == "application" and (subtype == "json" or subtype.endswith("+json"))


def _check_route(path: str, endpoint: Callable[..., Any], dependant: Any) -> None:
    """Raise ``TypeError`` unless the route has the shape that ``JsonBodyRoute`` handles."""
    problems = []
    if not inspect.iscoroutinefunction(endpoint):
        problems.append("the endpoint is not a coroutine function")
    if len(dependant.body_params) != 1 or not _is_model(
        dependant.body_params[0].field_info.annotation
    ):
        problems.append("it needs exactly one body parameter, of a pydantic model")
    if any(
        param.field_info.annotation is not str or param.field_info.metadata
        for param in dependant.path_params
    ):
        problems.append("a path parameter is not a plain str without constraints")
    if dependant.query_params or dependant.header_params or dependant.cookie_params:
        problems.append("it has query, header or cookie parameters")
    special = (
        dependant.request_param_name,
        dependant.websocket_param_name,
        dependant.http_connection_param_name,
        dependant.response_param_name,
        dependant.background_tasks_param_name,
        dependant.security_scopes_param_name,
    )
    if any(name is not None for name in special):
        problems.append("it takes the request, response or background tasks")
    if any(not isinstance(sub.call, TokenRequirement) for sub in dependant.dependencies):
        problems.append("it has dependencies other than TokenRequirement")
    if problems:
        raise TypeError(f"JsonBodyRoute cannot handle {path}: {'; '.join(problems)}")


def _is_model(annotation: Any) -> bool:
    return inspect.isclass(annotation) and issubclass(annotation, BaseModel)
