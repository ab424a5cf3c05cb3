"""The JSON Schema of what a client posts: each postable type's envelope and `data`, as the
OpenAPI document describes them (`POST /v1/events`).

Derived from the Avro schemas and their extra constraint attributes (see `schemas.validate`),
so the document says exactly what the validator accepts: a record is an object with its
required fields and nothing else, a field with a default may be left out, `["null", T]` also
takes null, `timestamp-millis` is an RFC 3339 `date-time` and `uuid` a `uuid` string.
"""

from __future__ import annotations

from typing import Any

from schemas.catalog import EVENT_TYPES, EventType

__all__ = ["data_json_schema", "event_json_schema", "postable_event_schemas"]

_INT = {"int": (-(2**31), 2**31 - 1), "long": (-(2**63), 2**63 - 1)}
#: Avro's constraint attributes -> JSON Schema keywords, by the JSON type they constrain
_STRING = {"minLength": "minLength", "maxLength": "maxLength", "pattern": "pattern"}
_NUMBER = {"min": "minimum", "max": "maximum"}
_ARRAY = {"minItems": "minItems", "maxItems": "maxItems"}


class _Converter:
    def __init__(self) -> None:
        self.named: dict[str, dict[str, Any]] = {}

    def convert(self, schema: Any, namespace: str, field: dict[str, Any] | None = None) -> Any:
        out = self._type(schema, namespace, field or {})
        doc = (field or {}).get("doc")
        if doc and isinstance(out, dict):
            out = {**out, "description": doc}
        return out

    def _type(self, schema: Any, namespace: str, field: dict[str, Any]) -> dict[str, Any]:
        if isinstance(schema, list):
            branches = [self._type(b, namespace, field) for b in schema if b != "null"]
            one = branches[0] if len(branches) == 1 else {"anyOf": branches}
            return {"anyOf": [{"type": "null"}, one]} if "null" in schema else one
        if isinstance(schema, str):
            return self._primitive(schema, namespace, field)
        t = schema["type"]
        if t == "record":
            return self._record(schema, namespace)
        if t == "enum":
            out = {"type": "string", "enum": list(schema["symbols"])}
            self._name(schema, namespace, out)
            return out
        if t == "array":
            items = self._type(schema["items"], namespace, {})
            return _constrained({"type": "array", "items": items}, field, _ARRAY)
        if t == "map":
            values = self._type(schema["values"], namespace, {})
            return {"type": "object", "additionalProperties": values}
        logical = schema.get("logicalType")
        if logical == "timestamp-millis":
            return {"type": "string", "format": "date-time"}
        if logical == "uuid":
            return {"type": "string", "format": "uuid"}
        return self._primitive(t, namespace, field)

    def _primitive(self, name: str, namespace: str, field: dict[str, Any]) -> dict[str, Any]:
        if name == "string":
            return _constrained({"type": "string"}, field, _STRING)
        if name in _INT:
            lo, hi = _INT[name]
            out = _constrained({"type": "integer"}, field, _NUMBER)
            out["minimum"] = max(lo, out.get("minimum", lo))
            out["maximum"] = min(hi, out.get("maximum", hi))
            return out
        if name in ("float", "double"):
            return _constrained({"type": "number"}, field, _NUMBER)
        if name in ("boolean", "null"):
            return {"type": name}
        full = name if "." in name else f"{namespace}.{name}"
        found = self.named.get(full) or self.named.get(name)
        if found is None:
            raise ValueError(f"unknown Avro type {name!r}")
        return found

    def _name(self, schema: dict[str, Any], namespace: str, out: dict[str, Any]) -> str:
        ns = schema.get("namespace", namespace)
        name = schema["name"]
        self.named[name if "." in name else f"{ns}.{name}" if ns else name] = out
        return str(ns)

    def _record(self, schema: dict[str, Any], namespace: str) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "object"}
        ns = self._name(schema, namespace, out)  # before the fields: they may name it
        properties: dict[str, Any] = {}
        required: list[str] = []
        for f in schema["fields"]:
            prop = self.convert(f["type"], ns, f)
            if "default" in f:
                prop = {**prop, "default": f["default"]}
            else:
                required.append(f["name"])
            properties[f["name"]] = prop
        out.update(properties=properties, additionalProperties=False)
        if required:
            out["required"] = required
        if schema.get("doc"):
            out["description"] = schema["doc"]
        return out


def _constrained(
    out: dict[str, Any], field: dict[str, Any], keywords: dict[str, str]
) -> dict[str, Any]:
    for attr, keyword in keywords.items():
        if field.get(attr) is not None:
            out[keyword] = field[attr]
    return out


def data_json_schema(event: EventType) -> dict[str, Any]:
    """The JSON Schema of `event`'s `data`, as a client sends it."""
    schema = event.schema
    (data,) = [f for f in schema["fields"] if f["name"] == "data"]
    out: dict[str, Any] = _Converter().convert(data["type"], schema.get("namespace", ""))
    return out


def _optional(schema: dict[str, Any], description: str) -> dict[str, Any]:
    # the validator takes null for the envelope's optional fields: as if left out
    return {"anyOf": [schema, {"type": "null"}], "description": description}


def event_json_schema(event: EventType) -> dict[str, Any]:
    """The JSON Schema of one posted event of type `event` (its envelope and its data)."""
    text = {"type": "string", "minLength": 1, "maxLength": 200}
    return {
        "title": event.name,
        "description": event.description,
        "type": "object",
        "required": ["type", "data"],
        "additionalProperties": False,
        "properties": {
            "type": {"type": "string", "const": event.name},
            "id": _optional(
                {"type": "string", "format": "uuid"},
                "the idempotency key (default: a new UUID)",
            ),
            "occurred_at": _optional(
                {"type": "string", "format": "date-time"},
                "when it happened, with its offset; at most INGEST_MAX_CLOCK_SKEW_S (60 s) "
                "ahead of the API's clock (default: when the API received it)",
            ),
            "source": _optional(text, "who sent it (default: `api:<the key's name>`)"),
            "trace_id": _optional(text, "its trace id (default: the request's)"),
            "data": data_json_schema(event),
        },
    }


def postable_event_schemas() -> list[dict[str, Any]]:
    """One JSON Schema per type a client may post, by name."""
    return [event_json_schema(e) for _, e in sorted(EVENT_TYPES.items()) if e.postable]
