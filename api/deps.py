"""FastAPI dependencies, as `Annotated` aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from mohallamart.settings import Settings, get_settings

__all__ = ["SettingsDep"]

SettingsDep = Annotated[Settings, Depends(get_settings)]
