# SPDX-License-Identifier: Apache-2.0
"""What the front door reads from a request before it knows where the
request goes: the model it names. The body is read once, here; the model's
app then gets the same bytes again (``replay_body``).
"""

import json
from dataclasses import dataclass

from starlette.datastructures import QueryParams
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.types import Receive, Scope

from vllm.worker_controller.routes import FORM_ROUTES


@dataclass
class InvalidRequest:
    """Why a request cannot name a model (answered with a 400)."""

    message: str


async def requested_model(scope: Scope, body: bytes) -> str | InvalidRequest | None:
    """The model a request names (None: none), or why it cannot name one:
    the JSON body's ``model``; a multipart upload's ``model`` field (speech
    to text); a GET's ``?model=`` (it has no body)."""
    if scope["method"] == "GET":
        names = QueryParams(scope.get("query_string", b"")).getlist("model")
        return names[-1] if names else None
    if scope["path"] in FORM_ROUTES:
        return await _form_model(scope, body)
    return _model_name(body)


async def _form_model(scope: Scope, body: bytes) -> str | InvalidRequest | None:
    """The ``model`` field of a form body (multipart or urlencoded); the
    model's app parses the body again, from the same bytes."""
    request = Request(scope, replay_body(body, _no_more_body))
    try:
        async with request.form() as form:
            value = form.get("model")
    except (MultiPartException, ValueError) as e:
        return InvalidRequest(f"Invalid form body: {e}")
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        return InvalidRequest("'model' must be a form field, not a file")
    return value


async def _no_more_body() -> dict:
    return {"type": "http.disconnect"}


def _model_name(body: bytes) -> str | InvalidRequest | None:
    """The request's ``model``, None if the JSON object has none, or why
    the body cannot name one."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        return InvalidRequest("Request body must be JSON")
    if not isinstance(payload, dict):
        return InvalidRequest("Request body must be a JSON object with a 'model' field")
    if payload.get("model") is None:
        return None
    if not isinstance(payload["model"], str):
        return InvalidRequest("'model' must be a string")
    return payload["model"]


def replay_body(body: bytes, receive: Receive) -> Receive:
    """Yields the already-read body once, then the client's own messages
    (so that upstream's disconnect checks still see real disconnects)."""
    sent = False

    async def replay() -> dict:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay
