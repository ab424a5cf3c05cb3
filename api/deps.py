"""FastAPI dependencies, as `Annotated` aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.auth import Authenticator
from mohallamart.apikeys import ApiKey
from mohallamart.settings import Settings, get_settings

__all__ = ["ApiKeyDep", "BearerDep", "SettingsDep"]

_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer mm_...`")


async def _api_key(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> ApiKey:
    auth: Authenticator = request.app.state.auth
    header = f"Bearer {credentials.credentials}" if credentials else None
    return await auth.authenticate(header)


async def _settings(request: Request) -> Settings:
    # Async on purpose: FastAPI runs a sync dependency in a thread pool, a hop per request.
    settings: Settings | None = getattr(request.app.state, "settings", None)
    return settings if settings is not None else get_settings()


SettingsDep = Annotated[Settings, Depends(_settings)]
ApiKeyDep = Annotated[ApiKey, Depends(_api_key)]
# Only declares the scheme in OpenAPI; the route authenticates with the raw header itself.
BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
