# syntax=docker/dockerfile:1
# The MohallaMart pipeline image: one image for the API, the Faust workers, the SMTP sink and the
# operator tool (`mohallamart ...`). docker-compose.yml builds it as mohallamart-pipeline:0.1.0.

# Pinned to a patch release and a Debian release; bump deliberately (tests/unit/test_compose.py
# refuses an unpinned base).
FROM python:3.11.14-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# An unprivileged user; the only place it writes is /data (a volume in docker-compose.yml).
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /home/app --create-home \
        --shell /usr/sbin/nologin app \
    && mkdir -p /data \
    && chown app:app /data

WORKDIR /app

# Exact versions first, in their own layer: the lock is what the tests passed with (it also pins
# setuptools, used below to install the project without build isolation).
COPY requirements.lock ./
RUN pip install --no-cache-dir -r requirements.lock

# Then the project itself, without resolving anything again. Installed editable so PROJECT_ROOT
# (core/settings.py) is /app, as the defaults in docker-compose.yml assume.
COPY pyproject.toml README.md ./
COPY core ./core
COPY mohallamart ./mohallamart
COPY api ./api
COPY streams ./streams
COPY connectors ./connectors
COPY schemas ./schemas
RUN pip install --no-cache-dir --no-deps --no-build-isolation -e . \
    && mohallamart --help > /dev/null

USER app

# API, Faust web (WORKER_WEB_PORT), SMTP sink.
EXPOSE 8000 6066 1025

CMD ["mohallamart", "--help"]
