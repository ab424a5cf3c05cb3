"""Avro encoding in the Confluent wire format: magic byte 0, schema id (4 bytes, big-endian),
then the Avro binary body. Any Confluent-compatible deserializer reads what this writes."""

from __future__ import annotations

import io
import struct
from collections.abc import Callable
from typing import Any

import fastavro

from schemas.encoder import compile_encoder

__all__ = ["MAGIC", "EventCodec", "frame", "unframe"]

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
