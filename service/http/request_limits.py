"""Pure-ASGI request limits (DESIGN section 10): bounded bodies, one value per query parameter.

:class:`RequestLimits` sits in front of the routes:

- a body is at most ``max_body_bytes``: a ``Content-Length`` above it is answered 413 before
  a byte is read, and the bytes that do arrive are counted as they come (chunked bodies and
  lying lengths included), so no request holds more than the limit in memory;
- a query parameter given twice (``?history=1&history=500``) is a 422 in FastAPI's
  validation-error shape, not "the last one wins".

Which requests need a token is the routes' business (``api.AdminRoute`` checks it before the
body is read); this layer only bounds what any request may cost.
"""

from __future__ import annotations

import json
from urllib.parse import parse_qsl

from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_BODY_BYTES = 64 * 1024  # the largest admin body is a few dozen bytes


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` once a body passes the limit; FastAPI re-raises HTTPExceptions
    from its body parsing, so the app's exception handling answers it as a 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body larger than {limit} bytes")


def repeated_parameter(query_string: bytes) -> str | None:
    """The first query parameter name that occurs more than once, if any."""
    seen: set[str] = set()
    for name, _ in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
        if name in seen:
            return name
        seen.add(name)
    return None


async def _answer(send: Send, status: int, body: object) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


class RequestLimits:
    """Pure ASGI middleware: 413 for a body over ``max_body_bytes``, 422 for a repeated query
    parameter (module docstring)."""

    def __init__(self, app: ASGIApp, max_body_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        name = repeated_parameter(scope.get("query_string", b""))
        if name is not None:
            detail = {
                "type": "repeated_parameter",
                "loc": ["query", name],
                "msg": f"query parameter {name!r} given more than once; give it once",
                "input": None,
            }
            await _answer(send, 422, {"detail": [detail]})
            return
        limit = self.max_body_bytes
        for key, value in scope.get("headers", ()):
            if key != b"content-length":
                continue
            if not value.isdigit():
                await _answer(send, 400, {"detail": "Content-Length is not a number"})
                return
            if int(value) > limit:
                await _answer(send, 413, {"detail": f"request body larger than {limit} bytes"})
                return
        received = 0
        started = False

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except BodyTooLarge:  # read outside the routes' exception handling
            if started:
                raise
            await _answer(send, 413, {"detail": f"request body larger than {limit} bytes"})


def known_query_only(request: Request) -> None:
    """App-wide dependency: a query parameter no route declares is a 422 in FastAPI's
    validation-error shape, on every route alike (``?limt=5`` is a mistake to report, not
    to ignore), like a bad value or a repeated parameter."""
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None:
        return
    allowed: set[str] = set()
    todo = [dependant]
    while todo:  # the route's own query parameters and its dependencies'
        d = todo.pop()
        allowed.update(p.alias for p in d.query_params)
        todo.extend(d.dependencies)
    unknown = [k for k in request.query_params if k not in allowed]
    if unknown:
        raise RequestValidationError(
            [
                {
                    "type": "extra_forbidden",
                    "loc": ("query", k),
                    "msg": f"unknown query parameter {k!r}; this route takes "
                    f"{', '.join(sorted(allowed)) or 'none'}",
                    "input": request.query_params[k],
                }
                for k in unknown
            ]
        )
