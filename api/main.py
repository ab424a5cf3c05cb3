"""Build the FastAPI application."""

from __future__ import annotations

from fastapi import FastAPI

from api.routes import health

__all__ = ["create_app"]


def create_app() -> FastAPI:
    app = FastAPI(
        title="MohallaMart event pipeline",
        version="0.1.0",
        description="Ingestion and read API of the MohallaMart event pipeline.",
    )
    app.include_router(health.router)
    return app
