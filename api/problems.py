"""Errors as `application/problem+json` (RFC 9457), each naming the field and the rule."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from schemas.validate import FieldError

__all__ = [
    "PROBLEM_JSON",
    "PROBLEM_SCHEMA",
    "Problem",
    "install_handlers",
    "json_answer",
    "problem_body",
    "problem_response",
    "problems",
]

PROBLEM_JSON = "application/problem+json"

_TITLES = {
    400: "Malformed request",
    401: "Not authenticated",
    403: "Forbidden",
    404: "Not found",
    409: "Conflict",
    413: "Payload too large",
    415: "Unsupported media type",
    422: "Invalid event",
    429: "Too many requests",
    500: "Internal server error",
    503: "Service unavailable",
}


#: the JSON Schema of a problem document, as the OpenAPI document gives it for every error
PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string", "description": "`/problems/<slug>`"},
        "title": {"type": "string"},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": {"type": "string"},
        "errors": {
            "type": "array",
            "description": "each field that breaks a rule (in a batch the field starts "
            "`events[3].`)",
            "items": {
                "type": "object",
                "required": ["field", "rule"],
                "properties": {"field": {"type": "string"}, "rule": {"type": "string"}},
            },
        },
    },
}
_RETRY_AFTER = {"description": "seconds to wait before retrying", "schema": {"type": "string"}}
_HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": {"description": "`Bearer`", "schema": {"type": "string"}}},
    409: {"Retry-After": _RETRY_AFTER},
    429: {"Retry-After": _RETRY_AFTER},
    503: {"Retry-After": _RETRY_AFTER},
}


def problems(answers: Mapping[int, str]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for errors answered as problem documents: status -> when."""
    return {
        status: {
            "description": when,
            "content": {PROBLEM_JSON: {"schema": PROBLEM_SCHEMA}},
            **({"headers": _HEADERS[status]} if status in _HEADERS else {}),
        }
        for status, when in answers.items()
    }


def json_answer(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    """An OpenAPI response of a JSON document (`schema`: any object when not given)."""
    return {
        "description": description,
        "content": {"application/json": {"schema": schema or {"type": "object"}}},
    }


class Problem(Exception):
    """Raise to answer with a problem document."""

    def __init__(
        self,
        status: int,
        slug: str,
        detail: str,
        *,
        errors: Sequence[FieldError] = (),
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.slug = slug
        self.detail = detail
        self.errors = list(errors)
        self.headers = headers or {}
        self.extra = extra or {}


def problem_body(p: Problem) -> bytes:
    body: dict[str, Any] = {
        "type": f"/problems/{p.slug}",
        "title": _TITLES.get(p.status, "Error"),
        "status": p.status,
        "detail": p.detail,
    }
    if p.errors:
        body["errors"] = [{"field": e.field, "rule": e.rule} for e in p.errors]
    body.update(p.extra)
    return orjson.dumps(body)


def problem_response(p: Problem) -> Response:
    return Response(
        problem_body(p), status_code=p.status, media_type=PROBLEM_JSON, headers=p.headers
    )


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def _problem(_: Request, exc: Problem) -> Response:
        return problem_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> Response:
        return problem_response(
            Problem(exc.status_code, "http-error", str(exc.detail), headers=dict(exc.headers or {}))
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> Response:
        errors = [
            FieldError(".".join(str(p) for p in e["loc"][1:]) or str(e["loc"][0]), e["msg"])
            for e in exc.errors()
        ]
        return problem_response(
            Problem(422, "validation-error", "the request's parameters are invalid", errors=errors)
        )
