"""FastAPI dependencies, as `Annotated` aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from core.settings import Settings, get_settings

__all__ = ["BearerDep", "SettingsDep"]

_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer mm_...`")


async def _settings(request: Request) -> Settings:
    # Async on purpose: FastAPI runs a sync dependency in a thread pool, a hop per request.
    settings: Settings | None = getattr(request.app.state, "settings", None)
    return settings if settings is not None else get_settings()


SettingsDep = Annotated[Settings, Depends(_settings)]
# Only declares the scheme in OpenAPI; the route authenticates with the raw header itself.
BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
