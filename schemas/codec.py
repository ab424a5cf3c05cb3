"""Avro encoding in the Confluent wire format: magic byte 0, schema id (4 bytes, big-endian),
then the Avro binary body. Any Confluent-compatible deserializer reads what this writes."""

from __future__ import annotations

import io
import struct
from collections.abc import Callable
from typing import Any

import fastavro

from schemas.encoder import compile_encoder

__all__ = ["MAGIC", "EventCodec", "RegistryDecoder", "UndecodableRecord", "frame", "unframe"]

MAGIC = 0
_HEADER = struct.Struct(">bI")


def frame(schema_id: int, body: bytes) -> bytes:
    return _HEADER.pack(MAGIC, schema_id) + body


def unframe(payload: bytes) -> tuple[int, bytes]:
    """(schema id, Avro body); ValueError if it is not Confluent-framed."""
    if len(payload) < _HEADER.size:
        raise ValueError(f"{len(payload)} bytes: too short for the Confluent wire format")
    magic, schema_id = _HEADER.unpack_from(payload)
    if magic != MAGIC:
        raise ValueError(f"unknown magic byte {magic}: not the Confluent wire format")
    return schema_id, payload[_HEADER.size :]


class EventCodec:
    """Writes and reads one Avro schema."""

    def __init__(self, schema: dict[str, Any]) -> None:
        self.parsed = fastavro.parse_schema(schema)
        try:
            self._compiled: Callable[[dict[str, Any], bytes], bytes] | None = compile_encoder(
                schema
            )
        except ValueError:
            self._compiled = None  # fastavro handles what the compiled encoder does not

    def encode(self, schema_id: int, datum: dict[str, Any]) -> bytes:
        if self._compiled is not None:
            return self._compiled(datum, _HEADER.pack(MAGIC, schema_id))
        return self.encode_fastavro(schema_id, datum)

    def encode_fastavro(self, schema_id: int, datum: dict[str, Any]) -> bytes:
        buf = io.BytesIO()
        buf.write(_HEADER.pack(MAGIC, schema_id))
        fastavro.schemaless_writer(buf, self.parsed, datum)
        return buf.getvalue()

    def decode(self, payload: bytes) -> dict[str, Any]:
        _, body = unframe(payload)
        return fastavro.schemaless_reader(io.BytesIO(body), self.parsed)  # type: ignore[return-value]


class UndecodableRecord(ValueError):
    """Bytes that are not a Confluent-framed Avro record of a known schema."""


class RegistryDecoder:
    """Reads Confluent-framed Avro records of any schema, by the id in their frame.

    The writer's schema is fetched from the registry once per id (`fetch`, blocking: call
    `load` off the event loop for ids `needs` reports), so a record is read exactly as written,
    whichever version of its type produced it."""

    def __init__(self, fetch: Callable[[int], dict[str, Any]]) -> None:
        self._fetch = fetch
        self._parsed: dict[int, Any] = {}
        self._types: dict[str, str] | None = None

    def schema_id(self, payload: bytes | None) -> int:
        if payload is None:
            raise UndecodableRecord("empty record (no value)")
        try:
            return unframe(payload)[0]
        except ValueError as exc:
            raise UndecodableRecord(str(exc)) from exc

    def needs(self, schema_id: int) -> bool:
        return schema_id not in self._parsed

    def type_of(self, schema_id: int) -> str | None:
        """The event type a loaded writer's schema is for (None: not one of the catalogue's),
        known without decoding a record: a stage can pass over the types it does not handle."""
        from schemas.catalog import EVENT_TYPES

        if self._types is None:
            self._types = {et.record_name: name for name, et in EVENT_TYPES.items()}
        parsed = self._parsed.get(schema_id)
        return None if not isinstance(parsed, dict) else self._types.get(str(parsed.get("name")))

    def load(self, schema_id: int) -> None:
        """Fetch and parse a writer's schema (blocking; raises what `fetch` raises)."""
        if schema_id not in self._parsed:
            self._parsed[schema_id] = fastavro.parse_schema(self._fetch(schema_id))

    def decode(self, payload: bytes | None) -> dict[str, Any]:
        schema_id = self.schema_id(payload)
        assert payload is not None
        parsed = self._parsed.get(schema_id)
        if parsed is None:
            self.load(schema_id)
            parsed = self._parsed[schema_id]
        try:
            datum = fastavro.schemaless_reader(io.BytesIO(payload[_HEADER.size :]), parsed)
        except Exception as exc:  # fastavro raises EOFError, ValueError, IndexError...
            raise UndecodableRecord(
                f"not an Avro record of schema {schema_id}: {type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(datum, dict) or "type" not in datum or "data" not in datum:
            raise UndecodableRecord(f"schema {schema_id} is not an event envelope")
        return datum
