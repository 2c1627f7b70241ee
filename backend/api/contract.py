"""The published OpenAPI document is the contract (issue 26): one error body, every status code a
route can answer, the right content types.

Every refusal has one shape, :class:`backend.api.schemas.Problem` (``{"detail": "...",
"errors": [...]}``; ``errors`` lists every problem, with its ``field`` where there is one),
FastAPI's own request validation included (its default schema says ``detail`` is a list; ours
never is). The codes every route shares are added from what the route takes: 503 on all (the
admission limit, a database that is down or busy, the request deadline), 401/403 where it
needs a user (its bearer token is declared), 413 where it takes a body, 422 and 404 where it
takes input (an id in it may name nothing). Codes particular to a
route (409, 202...) are declared on the route itself."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from backend.api.schemas import Problem

SHARED = {
    401: "not logged in, or the token is no longer valid (`WWW-Authenticate: Bearer`)",
    403: "not allowed: admins only, or a path outside VLSTUDIO_DATA_ROOTS",
    404: "something it names does not exist (or is not yours)",
    413: "the body is larger than the limit (VLSTUDIO_MAX_REQUEST_BYTES; uploads VLSTUDIO_MAX_UPLOAD_BYTES)",
    422: "invalid input; `errors` lists every problem with its `field`",
    503: "at capacity, the database busy or unreachable, or the request stopped at its deadline: retry after "
         "`Retry-After` seconds",
}
PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}


def _codes(op: dict[str, Any]) -> set[int]:
    codes = {503}
    params = op.get("parameters", [])
    if op.get("security"):  # backend.api.auth.current_user: a bearer token
        codes |= {401, 403}
    if "requestBody" in op:
        codes |= {413, 422}
    if params:
        codes.add(422)
    if 422 in codes:  # an id in the path, the query or the body names something that may not exist
        codes.add(404)
    return codes


def _problem_response(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": PROBLEM_REF}}}


def answers(*media_types: str) -> dict[str, Any]:
    """``openapi_extra`` of a route whose success is not (only) JSON: the media types it answers
    with (``*/*`` for a file of any type), in place of FastAPI's default ``application/json``."""
    return {"x-answers": list(media_types)}


def _media(media_type: str) -> dict[str, Any]:
    if media_type in ("application/json", "*/*"):  # */*: a run folder's file, JSON ones included
        return {"schema": {}}
    if media_type == "text/event-stream":  # each event: `event` name, JSON `data`, `id` (the resume cursor)
        return {"schema": {"type": "object", "properties": {
            "event": {"type": "string"}, "data": {"type": "string"}, "id": {"type": "string"},
            "retry": {"type": "integer"}}}}
    if media_type == "application/octet-stream" or media_type.startswith("image/"):
        return {"schema": {"type": "string", "format": "binary"}}
    return {"schema": {"type": "string"}}


def build(app: FastAPI) -> dict[str, Any]:
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.update({k: v for k, v in Problem.model_json_schema(ref_template="#/components/schemas/{model}")
                       .pop("$defs", {}).items()})
    components["Problem"] = {k: v for k, v in Problem.model_json_schema(
        ref_template="#/components/schemas/{model}").items() if k != "$defs"}
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    for ops in schema.get("paths", {}).values():
        for op in ops.values():
            responses = op.setdefault("responses", {})
            media = op.pop("x-answers", None)
            if media:
                ok = next(c for c in sorted(responses) if c.startswith("2"))
                responses[ok]["content"] = {m: _media(m) for m in media}
            for code in _codes(op):
                responses.setdefault(str(code), _problem_response(SHARED[code]))
            for code, response in responses.items():
                if code.isdigit() and int(code) >= 400:
                    content = response.setdefault("content", {})
                    content["application/json"] = {"schema": PROBLEM_REF}
    return schema


def install(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
