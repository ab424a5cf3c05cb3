"""FastAPI dependencies, as `Annotated` aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.auth import Authenticator, RateLimiter
from api.ingest import Ingestor
from mohallamart.apikeys import ApiKey
from mohallamart.settings import Settings, get_settings

__all__ = ["ApiKeyDep", "IngestorDep", "LimiterDep", "SettingsDep"]

_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer mm_...`")


def _ingestor(request: Request) -> Ingestor:
    return request.app.state.ingestor  # type: ignore[no-any-return]


def _limiter(request: Request) -> RateLimiter:
    return request.app.state.limiter  # type: ignore[no-any-return]


async def _api_key(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> ApiKey:
    auth: Authenticator = request.app.state.auth
    header = f"Bearer {credentials.credentials}" if credentials else None
    return await auth.authenticate(header)


SettingsDep = Annotated[Settings, Depends(get_settings)]
IngestorDep = Annotated[Ingestor, Depends(_ingestor)]
LimiterDep = Annotated[RateLimiter, Depends(_limiter)]
ApiKeyDep = Annotated[ApiKey, Depends(_api_key)]
