"""The event contract: every catalog type has a well-formed Avro schema and a valid example.

No network: the schemas are parsed with fastavro and the Apache `avro` library, each example is
turned into an Avro datum (ISO timestamps to datetimes, defaults filled in), wrapped in an
envelope and round-tripped through fastavro's schemaless writer and reader.

The rules checked here are the contract's conventions (see `schemas/catalog.py`):
- a top-level record `mohallamart.events.<category>.<PascalCaseType>` with the envelope fields
  `id`, `type`, `occurred_at`, `source`, `trace_id` in this order, then `data`, a record
  `<Name>Data` holding the typed payload;
- money is a `long` number of paise in a field named `*_paise` with `"min": 0`, never a float;
- optional fields are `["null", T]` with `"default": null`; constraints are field attributes
  (`min`, `max`, `minLength`, `maxLength`, `pattern`, `minItems`, `maxItems`) on fields of the
  matching type;
- the key field is a required, non-empty string directly in `data`;
- named types are unique across all schemas, so any set of them can be registered together.
"""

from __future__ import annotations

import copy
import io
import json
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import avro.schema
import fastavro
import fastavro.validation
import pytest

from schemas.catalog import (
    ENVELOPE_FIELDS,
    EVENT_TYPES,
    EXAMPLE_DIR,
    SCHEMA_DIR,
    TOPICS,
    EventType,
)

#: Every event type the issues ask for (issue 4, item 1, and issue 5).
REQUIRED_TYPES = {
    "user.registered",
    "user.updated",
    "user.deleted",
    "user.preferences_changed",
    "user.signed_in",
    "user.signed_out",
    "order.created",
    "order.status_changed",
    "order.cancelled",
    "order.refunded",
    "order.accepted",
    "order.rejected",
    "product.created",
    "product.updated",
    "product.published",
    "product.archived",
    "product.moved_to_draft",
    "product.stock_set",
    "product.stock_adjusted",
    "product.stock_changed",
    "product.out_of_stock",
    "product.back_in_stock",
    "notification.requested",
    "analytics.tracked",
    "shopkeeper.applied",
    "shopkeeper.approved",
    "shopkeeper.rejected",
    "search.reindex_requested",
    "cleanup.expired_sessions",
    "cleanup.old_logs",
    "ops.drift_detected",
    "shop.created",
    "shop.updated",
}

#: The events only the workers produce; the API refuses them from clients.
DERIVED_TYPES = {
    "order.accepted",
    "order.rejected",
    "product.stock_changed",
    "product.out_of_stock",
    "product.back_in_stock",
    "ops.drift_detected",
}

#: The record key of each category's events.
KEY_FIELDS = {
    "user": "user_id",
    "shop": "shop_id",
    "shopkeeper": "shop_id",
    "product": "product_id",
    "order": "order_id",
    "notification": "user_id",
    "analytics": "session_id",
    "search": "collection",
    "cleanup": "job",
    "ops": "entity_id",
}

#: Fields every event of a category carries in `data`, besides its key.
CARRIED_IDS = {
    "product": ("shop_id",),
    "order": ("shop_id", "user_id"),
    "shopkeeper": ("shopkeeper_id", "user_id"),
}

PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}
NUMERIC = {"int", "long", "float", "double"}
MONEY_WORDS = ("paise", "price", "amount", "total", "fee", "cost", "refund")
CONSTRAINT_TYPES = {
    "min": NUMERIC,
    "max": NUMERIC,
    "minLength": {"string"},
    "maxLength": {"string"},
    "pattern": {"string"},
    "minItems": {"array"},
    "maxItems": {"array"},
}
TIMESTAMP_MILLIS = {"type": "long", "logicalType": "timestamp-millis"}
OCCURRED_AT = datetime(2026, 11, 23, 10, 0, 0, 123000, tzinfo=UTC)

EVENTS = sorted(EVENT_TYPES)


# ------------------------------------------------------------------------------------ helpers
def _full_name(name: str, namespace: str) -> str:
    return name if "." in name or not namespace else f"{namespace}.{name}"


def _named_types(schema: Any, namespace: str = "") -> dict[str, tuple[dict[str, Any], str]]:
    """Every named type defined in a schema: full name -> (definition, its namespace)."""
    out: dict[str, tuple[dict[str, Any], str]] = {}

    def walk(s: Any, ns: str) -> None:
        if isinstance(s, list):
            for branch in s:
                walk(branch, ns)
            return
        if not isinstance(s, dict):
            return
        kind = s.get("type")
        if kind in ("record", "enum", "fixed"):
            ns = s.get("namespace", ns)
            full = _full_name(s["name"], ns)
            assert full not in out, f"{full} is defined twice"
            out[full] = (s, ns)
            for f in s.get("fields", ()):
                walk(f["type"], ns)
        elif kind == "array":
            walk(s["items"], ns)
        elif kind == "map":
            walk(s["values"], ns)

    walk(schema, namespace)
    return out


def _records(schema: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every record defined in a schema, with a readable path."""
    for full, (definition, _) in _named_types(schema).items():
        if definition["type"] == "record":
            yield full, definition


def _fields(schema: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every field of every record in a schema, as (record.field, field)."""
    for full, record in _records(schema):
        for f in record["fields"]:
            yield f"{full}.{f['name']}", f


def _base(type_: Any) -> Any:
    """The type without its null branch (for `["null", T]`)."""
    if isinstance(type_, list):
        non_null = [b for b in type_ if b != "null"]
        return non_null[0] if len(non_null) == 1 else type_
    return type_


def _kind(type_: Any) -> str:
    """`long`, `string`, `record`, `array`..., or the referenced type's name."""
    base = _base(type_)
    if isinstance(base, dict):
        return str(base["type"])
    if isinstance(base, list):
        return "union"
    return str(base)


def _logical(type_: Any) -> str | None:
    base = _base(type_)
    return base.get("logicalType") if isinstance(base, dict) else None


def _constraint_errors(field: dict[str, Any], value: Any, path: str) -> list[str]:
    """What our validator's field attributes would say about a (non-null) value."""
    errors = []
    if "min" in field and value < field["min"]:
        errors.append(f"{path}: {value} < min {field['min']}")
    if "max" in field and value > field["max"]:
        errors.append(f"{path}: {value} > max {field['max']}")
    if "minLength" in field and len(value) < field["minLength"]:
        errors.append(f"{path}: shorter than {field['minLength']}")
    if "maxLength" in field and len(value) > field["maxLength"]:
        errors.append(f"{path}: longer than {field['maxLength']}")
    if "pattern" in field and not re.fullmatch(field["pattern"], value):
        errors.append(f"{path}: {value!r} does not match {field['pattern']}")
    if "minItems" in field and len(value) < field["minItems"]:
        errors.append(f"{path}: fewer than {field['minItems']} items")
    if "maxItems" in field and len(value) > field["maxItems"]:
        errors.append(f"{path}: more than {field['maxItems']} items")
    return errors


def to_datum(
    schema: Any,
    value: Any,
    named: dict[str, tuple[dict[str, Any], str]],
    namespace: str = "",
    path: str = "data",
    errors: list[str] | None = None,
) -> Any:
    """A client's JSON value as an Avro datum: ISO strings become datetimes for
    timestamp-millis, missing fields take their defaults, unions take their non-null branch.
    Unknown or missing fields, and broken constraints, are appended to `errors`."""
    errors = [] if errors is None else errors
    if isinstance(schema, list):
        if value is None:
            if "null" not in schema:
                errors.append(f"{path}: null is not allowed")
            return None
        branches = [b for b in schema if b != "null"]
        assert len(branches) == 1, f"{path}: unions are only ['null', T] here"
        return to_datum(branches[0], value, named, namespace, path, errors)
    if isinstance(schema, str):
        if schema in PRIMITIVES:
            return value
        definition, ns = named[_full_name(schema, namespace)]
        return to_datum(definition, value, named, ns, path, errors)
    kind = schema["type"]
    if kind == "record":
        namespace = schema.get("namespace", namespace)
        if not isinstance(value, dict):
            errors.append(f"{path}: must be an object")
            return value
        known = {f["name"] for f in schema["fields"]}
        errors.extend(f"{path}.{k}: unknown field" for k in value if k not in known)
        out = {}
        for f in schema["fields"]:
            sub = f"{path}.{f['name']}"
            if f["name"] in value:
                raw = value[f["name"]]
            elif "default" in f:
                raw = copy.deepcopy(f["default"])
            else:
                errors.append(f"{sub}: is required")
                continue
            if raw is not None:
                errors.extend(_constraint_errors(f, raw, sub))
            out[f["name"]] = to_datum(f["type"], raw, named, namespace, sub, errors)
        return out
    if kind == "array":
        return [
            to_datum(schema["items"], v, named, namespace, f"{path}[{i}]", errors)
            for i, v in enumerate(value)
        ]
    if kind == "map":
        return {
            k: to_datum(schema["values"], v, named, namespace, f"{path}.{k}", errors)
            for k, v in value.items()
        }
    if kind == "enum":
        if value not in schema["symbols"]:
            errors.append(f"{path}: {value!r} is not one of {schema['symbols']}")
        return value
    if schema.get("logicalType") == "timestamp-millis" and isinstance(value, str):
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    if kind in PRIMITIVES:
        return value
    return to_datum(kind, value, named, namespace, path, errors)


def _normalise(value: Any) -> Any:
    """UUIDs as strings, so a datum compares with what fastavro reads back."""
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dict):
        return {k: _normalise(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalise(v) for v in value]
    return value


def _envelope(event: EventType, data: Any) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "type": event.name,
        "occurred_at": OCCURRED_AT,
        "source": "test",
        "trace_id": "t",
        "data": data,
    }


def _pascal(type_name: str) -> str:
    return "".join(part.capitalize() for part in re.split(r"[._]", type_name))


def _event_datum(event: EventType) -> tuple[dict[str, Any], list[str]]:
    schema = event.schema
    errors: list[str] = []
    data_schema = schema["fields"][-1]["type"]
    data = to_datum(
        data_schema, event.example, _named_types(schema), schema["namespace"], "data", errors
    )
    return _envelope(event, data), errors


# ------------------------------------------------------------------------------ the catalog
def test_catalog_has_every_required_type() -> None:
    missing = REQUIRED_TYPES - set(EVENT_TYPES)
    assert not missing, f"event types missing from the catalog: {sorted(missing)}"


def test_type_names_are_category_dot_lower_snake() -> None:
    for name in EVENT_TYPES:
        assert re.fullmatch(r"[a-z]+\.[a-z][a-z0-9]*(_[a-z0-9]+)*", name), name


def test_every_category_has_a_topic_and_event_types() -> None:
    categories = {e.category for e in EVENT_TYPES.values()}
    assert categories <= set(TOPICS), f"types without a topic: {categories - set(TOPICS)}"
    assert set(TOPICS) <= categories, f"topics without types: {set(TOPICS) - categories}"
    assert len(TOPICS) == 10


def test_derived_types_exist_and_are_not_postable() -> None:
    derived = {name for name, e in EVENT_TYPES.items() if not e.postable}
    assert derived == DERIVED_TYPES


def test_key_fields_follow_the_category() -> None:
    for name, e in EVENT_TYPES.items():
        assert e.key_field == KEY_FIELDS[e.category], name
        assert e.topic.category == e.category


def test_descriptions_are_one_line() -> None:
    for name, e in EVENT_TYPES.items():
        assert e.description.strip() and "\n" not in e.description, name


def test_subjects_and_record_names_are_unique() -> None:
    subjects = [e.subject for e in EVENT_TYPES.values()]
    assert len(set(subjects)) == len(subjects)
    records = [e.record_name for e in EVENT_TYPES.values()]
    assert len(set(records)) == len(records)


def test_no_orphan_schema_files_or_examples() -> None:
    on_disk = {p.relative_to(SCHEMA_DIR).as_posix() for p in SCHEMA_DIR.rglob("*.avsc")}
    in_catalog = {e.schema_file for e in EVENT_TYPES.values()}
    assert on_disk == in_catalog, (
        f"not in the catalog: {sorted(on_disk - in_catalog)}; "
        f"missing: {sorted(in_catalog - on_disk)}"
    )
    examples = {p.stem for p in EXAMPLE_DIR.glob("*.json")}
    assert examples == set(EVENT_TYPES), (
        f"orphan examples: {sorted(examples - set(EVENT_TYPES))}; "
        f"missing: {sorted(set(EVENT_TYPES) - examples)}"
    )


def test_named_types_are_unique_across_all_schemas() -> None:
    seen: dict[str, str] = {}
    for name, e in EVENT_TYPES.items():
        for full in _named_types(e.schema):
            assert full not in seen, f"{full} is defined in both {seen[full]} and {name}"
            seen[full] = name


# ------------------------------------------------------------------------ each event type
@pytest.mark.parametrize("name", EVENTS)
def test_schema_exists_and_parses(name: str) -> None:
    e = EVENT_TYPES[name]
    path = SCHEMA_DIR / e.schema_file
    assert path.is_file(), f"{path} is missing"
    raw = path.read_text()
    fastavro.parse_schema(json.loads(raw))
    avro.schema.parse(raw)


@pytest.mark.parametrize("name", EVENTS)
def test_envelope(name: str) -> None:
    e = EVENT_TYPES[name]
    s = e.schema
    assert s["type"] == "record"
    assert s["namespace"] == f"mohallamart.events.{e.category}"
    assert s["name"] == _pascal(name)
    assert s.get("doc", "").strip()
    fields = s["fields"]
    assert [f["name"] for f in fields] == [*ENVELOPE_FIELDS, "data"]
    types = {f["name"]: f["type"] for f in fields}
    assert types["id"] == {"type": "string", "logicalType": "uuid"}
    assert types["type"] == "string"
    assert types["occurred_at"] == TIMESTAMP_MILLIS
    assert types["source"] == "string"
    assert types["trace_id"] == "string"
    data = types["data"]
    assert isinstance(data, dict) and data["type"] == "record"
    assert data["name"] == f"{s['name']}Data"
    assert data.get("namespace", s["namespace"]) == s["namespace"]
    assert data.get("doc", "").strip()
    for f in fields:
        assert f.get("doc", "").strip(), f"envelope field {f['name']} has no doc"
        assert "default" not in f, f"envelope field {f['name']} must be required"


@pytest.mark.parametrize("name", EVENTS)
def test_key_field_is_a_required_string_in_data(name: str) -> None:
    e = EVENT_TYPES[name]
    data = e.schema["fields"][-1]["type"]
    fields = {f["name"]: f for f in data["fields"]}
    assert e.key_field in fields, f"data has no key field {e.key_field}"
    key = fields[e.key_field]
    assert key["type"] == "string", f"{e.key_field} must be a non-null string"
    assert "default" not in key
    assert key.get("minLength", 0) >= 1 or "pattern" in key, "an empty key must be refused"
    for carried in CARRIED_IDS.get(e.category, ()):
        assert carried in fields, f"{name} must carry {carried}"
        assert fields[carried]["type"] == "string", f"{carried} must be a non-null string"


@pytest.mark.parametrize("name", EVENTS)
def test_money_is_long_paise_never_float(name: str) -> None:
    for path, f in _fields(EVENT_TYPES[name].schema):
        field_name = f["name"].lower()
        kind = _kind(f["type"])
        money_like = any(word in field_name for word in MONEY_WORDS)
        if field_name.endswith("_paise"):
            assert kind == "long", f"{path} must be a long (paise)"
            assert f.get("min") == 0, f'{path} must have "min": 0'
        if kind in ("float", "double"):
            assert not money_like, f"{path} is money as a {kind}"
        if money_like and kind in NUMERIC:
            assert field_name.endswith("_paise"), f"{path}: money fields are named *_paise"


@pytest.mark.parametrize("name", EVENTS)
def test_no_float_or_double_for_money_anywhere(name: str) -> None:
    def walk(s: Any, where: str) -> Iterator[str]:
        if isinstance(s, list):
            for b in s:
                yield from walk(b, where)
        elif isinstance(s, dict):
            if s.get("type") in ("float", "double"):
                yield where
            for f in s.get("fields", ()):
                yield from walk(f["type"], f"{where}.{f['name']}")
            for sub in ("items", "values"):
                if sub in s:
                    yield from walk(s[sub], f"{where}[]")
        elif s in ("float", "double"):
            yield where

    for where in walk(EVENT_TYPES[name].schema, ""):
        assert not any(word in where.rsplit(".", 1)[-1].lower() for word in MONEY_WORDS), where


@pytest.mark.parametrize("name", EVENTS)
def test_optional_fields_and_constraints_are_well_formed(name: str) -> None:
    envelope = {f"{EVENT_TYPES[name].record_name}.{field}" for field in ENVELOPE_FIELDS}
    for path, f in _fields(EVENT_TYPES[name].schema):
        assert f.get("doc", "").strip(), f"{path} has no doc"
        t = f["type"]
        if isinstance(t, list):
            assert t[0] == "null" and len(t) == 2, f"{path}: optional is ['null', T]"
            assert "default" in f and f["default"] is None, f'{path}: "default": null'
        kind = _kind(t)
        for attr, kinds in CONSTRAINT_TYPES.items():
            if attr in f:
                assert kind in kinds, f"{path}: {attr} does not apply to {kind}"
        for attr in ("min", "max"):
            if attr in f:
                assert isinstance(f[attr], int | float) and not isinstance(f[attr], bool)
        for attr in ("minLength", "maxLength", "minItems", "maxItems"):
            if attr in f:
                assert isinstance(f[attr], int) and f[attr] >= 0, path
        for lo, hi in (("min", "max"), ("minLength", "maxLength"), ("minItems", "maxItems")):
            if lo in f and hi in f:
                assert f[lo] <= f[hi], path
        if "pattern" in f:
            re.compile(f["pattern"])
        if f["name"].endswith("_at") or f["name"] == "cutoff":
            assert _base(t) == TIMESTAMP_MILLIS, f"{path} must be timestamp-millis"
        if _logical(t) == "timestamp-millis":
            assert kind == "long", path
        if f["name"].endswith("_id") and _logical(t) != "uuid" and path not in envelope:
            assert kind == "string" and f.get("minLength", 0) >= 1, f"{path}: ids are strings"


@pytest.mark.parametrize("name", EVENTS)
def test_enums_have_valid_symbols(name: str) -> None:
    for full, (definition, _) in _named_types(EVENT_TYPES[name].schema).items():
        if definition["type"] != "enum":
            continue
        symbols = definition["symbols"]
        assert len(set(symbols)) == len(symbols), full
        assert all(re.fullmatch(r"[A-Z][A-Z0-9_]*", s) for s in symbols), full
        if "default" in definition:
            assert definition["default"] in symbols, full


@pytest.mark.parametrize("name", EVENTS)
def test_example_is_valid_and_round_trips(name: str) -> None:
    e = EVENT_TYPES[name]
    assert (EXAMPLE_DIR / f"{name}.json").is_file()
    example = e.example
    assert isinstance(example, dict)
    key = example.get(e.key_field)
    assert isinstance(key, str) and key, f"the example has no key {e.key_field}"

    datum, errors = _event_datum(e)
    assert not errors, errors
    parsed = fastavro.parse_schema(copy.deepcopy(e.schema))
    assert fastavro.validation.validate(datum, parsed, raise_errors=True)
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, parsed, datum)
    buffer.seek(0)
    back = fastavro.schemaless_reader(buffer, parsed)
    assert _normalise(back) == _normalise(datum)


def test_a_broken_example_is_caught() -> None:
    """The helper itself: unknown, missing and out-of-range fields are reported."""
    e = EVENT_TYPES["order.created"]
    schema = e.schema
    bad = copy.deepcopy(e.example)
    bad["items"][0]["quantity"] = 0
    bad["total_paise"] = -1
    bad["surprise"] = True
    del bad["shop_id"]
    errors: list[str] = []
    to_datum(
        schema["fields"][-1]["type"], bad, _named_types(schema), schema["namespace"], "data", errors
    )
    assert any("items[0].quantity" in err for err in errors)
    assert any("total_paise" in err for err in errors)
    assert any("surprise: unknown field" in err for err in errors)
    assert any("shop_id: is required" in err for err in errors)
