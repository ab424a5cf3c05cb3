"""FastAPI dependencies, as `Annotated` aliases."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from core.settings import Settings, get_settings

if TYPE_CHECKING:
    from api.auth import Authenticator

__all__ = ["BearerDep", "SettingsDep"]

_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer mm_...`")


async def _settings(request: Request) -> Settings:
    # Async on purpose: FastAPI runs a sync dependency in a thread pool, a hop per request.
    settings: Settings | None = getattr(request.app.state, "settings", None)
    return settings if settings is not None else get_settings()


async def _authenticated(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> HTTPAuthorizationCredentials | None:
    # FastAPI runs a route's dependencies before it validates the route's own parameters: so a
    # request without a valid key answers 401 whatever its parameters, never 422. The route
    # checks the key's scope itself (the key is cached: a second look costs a dict lookup).
    auth: Authenticator = request.app.state.auth
    await auth.authenticate(request.headers.get("authorization"))
    return credentials


SettingsDep = Annotated[Settings, Depends(_settings)]
#: declares the scheme in OpenAPI and refuses a request without a valid key (401) first
BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(_authenticated)]
