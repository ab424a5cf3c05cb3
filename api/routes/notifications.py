"""`GET /v1/notifications` (scope `admin`): the delivery log, per user or per event."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from psycopg.rows import dict_row

from api.auth import Authenticator, key_problems
from api.deps import BearerDep
from api.problems import Problem, json_answer, problems
from api.reads import json_bytes
from schemas.validate import FieldError

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["notifications"])


@router.get(
    "/notifications",
    summary="The delivery log: one row per (event, channel, recipient), newest first",
    responses={
        200: json_answer("the delivery log's rows"),
        **problems(
            {
                **key_problems("admin"),
                422: "a parameter breaks its rule; at least one of user_id and event_id",
            }
        ),
    },
)
async def delivery_log(
    request: Request,
    _bearer: BearerDep,
    user_id: Annotated[str | None, Query(max_length=64)] = None,
    event_id: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Response:
    auth: Authenticator = request.app.state.auth
    key = await auth.authenticate(request.headers.get("authorization"))
    auth.require(key, "admin")
    if not user_id and not event_id:
        raise Problem(
            422,
            "validation-error",
            "the request's parameters are invalid",
            errors=[FieldError("user_id|event_id", "give at least one")],
        )
    where, params = [], []
    if user_id:
        where.append("user_id = %s")
        params.append(user_id)
    if event_id:
        where.append("event_id::text = %s")
        params.append(event_id)
    async with (
        request.app.state.reads.pool.connection() as conn,
        conn.cursor(row_factory=dict_row) as cur,
    ):
        await cur.execute(
            "SELECT event_id, channel, recipient, user_id, kind, status, attempts, last_error, "
            "message_id, trace_id, created_at, updated_at, sent_at, delivery_status, "
            "delivery_error, delivery_at FROM notification_outbox "
            f"WHERE {' AND '.join(where)} ORDER BY created_at DESC LIMIT %s",  # noqa: S608
            (*params, limit),
        )
        rows = await cur.fetchall()
    return Response(json_bytes({"notifications": rows}), media_type="application/json")
