"""Register the repo's schemas in a Confluent-compatible registry (TopicRecordName subjects)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from core.errors import PipelineError
from schemas.catalog import EventType

__all__ = ["RegistryError", "RegistryUnavailable", "SchemaRegistry", "UnknownSchema"]


class RegistryError(PipelineError):
    """The schema registry refused a schema or could not be reached."""


class RegistryUnavailable(RegistryError):
    """The registry did not answer (refused, timed out): worth retrying."""


class UnknownSchema(RegistryError):
    """A schema id the registry does not know: the record can never be decoded."""


class SchemaRegistry:
    """A thin, caching client speaking only the Confluent Schema Registry API."""

    def __init__(self, url: str, timeout_s: float = 5.0) -> None:
        self.url = url
        self.client = SchemaRegistryClient({"url": url, "timeout": timeout_s})
        self._ids: dict[str, int] = {}

    def cached_id(self, event: EventType) -> int | None:
        """The schema id if this client registered it already (no network)."""
        return self._ids.get(event.name)

    def register(self, event: EventType) -> int:
        """The schema id of `event`'s schema, registering it under its subject if needed."""
        cached = self._ids.get(event.name)
        if cached is not None:
            return cached
        try:
            schema_id = self.client.register_schema(
                event.subject, Schema(json.dumps(event.schema), "AVRO")
            )
        except SchemaRegistryError as exc:
            raise RegistryError(
                f"registry refused {event.subject}: {exc.http_status_code} {exc.error_message}"
            ) from exc
        except Exception as exc:  # requests/httpx errors: unreachable, timeout
            raise RegistryError(
                f"registry at {self.url} not reachable: {type(exc).__name__}"
            ) from exc
        self._ids[event.name] = int(schema_id)
        return int(schema_id)

    def register_subject(self, subject: str, schema: dict[str, Any]) -> int:
        """The schema id of `schema` under `subject` (an output topic's), registering it if
        needed."""
        cached = self._ids.get(f"subject:{subject}")
        if cached is not None:
            return cached
        try:
            schema_id = self.client.register_schema(subject, Schema(json.dumps(schema), "AVRO"))
        except SchemaRegistryError as exc:
            raise RegistryError(
                f"registry refused {subject}: {exc.http_status_code} {exc.error_message}"
            ) from exc
        except Exception as exc:  # requests/httpx errors: unreachable, timeout
            raise RegistryUnavailable(
                f"registry at {self.url} not reachable: {type(exc).__name__}"
            ) from exc
        self._ids[f"subject:{subject}"] = int(schema_id)
        return int(schema_id)

    def register_all(self, events: Iterable[EventType]) -> dict[str, int]:
        return {e.name: self.register(e) for e in events}

    def schema_by_id(self, schema_id: int) -> dict[str, Any]:
        """The schema registered under `schema_id` (any subject, any version).

        Raises UnknownSchema if the registry has no such id, RegistryUnavailable if it does not
        answer."""
        try:
            schema = self.client.get_schema(schema_id)
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                raise UnknownSchema(f"the registry has no schema with id {schema_id}") from exc
            raise RegistryError(f"registry: schema {schema_id}: {exc.error_message}") from exc
        except Exception as exc:  # requests/httpx errors: unreachable, timeout
            raise RegistryUnavailable(
                f"registry at {self.url} not reachable: {type(exc).__name__}"
            ) from exc
        return json.loads(schema.schema_str or "null")  # type: ignore[no-any-return]

    def latest(self, subject: str) -> dict[str, Any] | None:
        """The latest registered schema of `subject`, or None if the subject is unknown."""
        try:
            reg = self.client.get_latest_version(subject)
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                return None
            raise RegistryError(f"registry: {subject}: {exc.error_message}") from exc
        text = reg.schema.schema_str if reg.schema is not None else None
        return json.loads(text) if text else None

    def is_compatible(self, subject: str, schema: dict[str, Any]) -> bool:
        try:
            return bool(self.client.test_compatibility(subject, Schema(json.dumps(schema), "AVRO")))
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                return True
            raise RegistryError(f"registry: {subject}: {exc.error_message}") from exc
