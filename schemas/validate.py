"""Turn a client's JSON into an Avro datum, or say exactly which field breaks which rule.

The Avro schema is the contract; constraints Avro cannot say are extra field attributes:
`min`, `max` (numbers), `minLength`, `maxLength`, `pattern` (strings), `minItems`, `maxItems`
(arrays). Every problem is reported with its path (`data.items[2].quantity`) and its rule
(`must be >= 1`); all problems of a value are collected, not just the first.

Conversion: `timestamp-millis` longs take an ISO 8601 string with a timezone and become an aware
`datetime`; everything else keeps its JSON value.

Validators are compiled once per schema into closures: the hot path does no schema lookups.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any, NamedTuple

__all__ = ["NUL_RULE", "FieldError", "Validator", "compile_schema"]


class FieldError(NamedTuple):
    field: str
    rule: str


Errors = list[FieldError]
#: (value, path, errors) -> converted value; appends to errors instead of raising
Check = Callable[[Any, str, Errors], Any]

_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)
_MISSING = object()


def _type_name(schema: Any) -> str:
    if isinstance(schema, str):
        return schema.rsplit(".", 1)[-1]
    if isinstance(schema, list):
        return " or ".join(_type_name(s) for s in schema)
    t = schema.get("type")
    if t in ("record", "enum", "fixed"):
        return str(schema["name"])
    return str(t)


def _describe(schema: Any) -> str:
    """What a value must be, in words, for the rule text."""
    t = (
        schema
        if isinstance(schema, str)
        else schema.get("type")
        if isinstance(schema, dict)
        else None
    )
    logical = schema.get("logicalType") if isinstance(schema, dict) else None
    if logical == "timestamp-millis":
        return "an ISO 8601 timestamp with a timezone"
    if logical == "uuid":
        return "a UUID"
    return {
        "string": "a string",
        "int": "an integer",
        "long": "an integer",
        "float": "a number",
        "double": "a number",
        "boolean": "a boolean",
        "null": "null",
        "record": "an object",
        "map": "an object",
        "array": "an array",
        "enum": "a string",
    }.get(str(t), str(t))


class _Compiler:
    def __init__(self) -> None:
        self.named: dict[str, Check] = {}

    def compile(
        self, schema: Any, namespace: str = "", field: dict[str, Any] | None = None
    ) -> Check:
        base = self._compile_type(schema, namespace)
        return _with_constraints(base, field) if field else base

    def _compile_type(self, schema: Any, namespace: str) -> Check:
        if isinstance(schema, str):
            return self._primitive_or_ref(schema, namespace)
        if isinstance(schema, list):
            return self._union(schema, namespace)
        t = schema["type"]
        if t == "record":
            return self._record(schema, namespace)
        if t == "enum":
            return self._enum(schema, namespace)
        if t == "array":
            return self._array(schema, namespace)
        if t == "map":
            return self._map(schema, namespace)
        if t == "fixed":
            raise ValueError("fixed types are not used in this contract")
        logical = schema.get("logicalType")
        if logical == "timestamp-millis" and t == "long":
            return _timestamp
        if logical == "uuid" and t == "string":
            return _uuid
        return self._primitive_or_ref(t, namespace)

    def _primitive_or_ref(self, name: str, namespace: str) -> Check:
        prim = _PRIMITIVES.get(name)
        if prim is not None:
            return prim
        full = name if "." in name else f"{namespace}.{name}" if namespace else name
        for candidate in (full, name):
            if candidate in self.named:
                return self._reference(candidate)
        raise ValueError(f"unknown Avro type {name!r}")

    def _reference(self, name: str) -> Check:
        named = self.named

        def check(value: Any, path: str, errors: Errors) -> Any:
            return named[name](value, path, errors)

        return check

    def _register(self, schema: dict[str, Any], namespace: str, check: Check) -> str:
        ns = schema.get("namespace", namespace)
        full = (
            schema["name"]
            if "." in schema["name"]
            else f"{ns}.{schema['name']}"
            if ns
            else schema["name"]
        )
        self.named[full] = check
        return str(ns)

    def _record(self, schema: dict[str, Any], namespace: str) -> Check:
        fields: list[tuple[str, Check, Any, bool]] = []
        known: set[str] = set()

        def check(value: Any, path: str, errors: Errors) -> Any:
            if not isinstance(value, dict):
                errors.append(FieldError(path or "(body)", "must be an object"))
                return None
            out: dict[str, Any] = {}
            prefix = f"{path}." if path else ""
            for name, sub, default, nullable in fields:
                v = value.get(name, _MISSING)
                if v is _MISSING:
                    if default is _MISSING:
                        errors.append(FieldError(prefix + name, "is required"))
                        continue
                    out[name] = default
                    continue
                if v is None and not nullable:
                    errors.append(FieldError(prefix + name, "must not be null"))
                    continue
                out[name] = sub(v, prefix + name, errors)
            if len(value) > len(known) or any(k not in known for k in value):
                for k in value:
                    if k not in known:
                        errors.append(FieldError(prefix + str(k), "unknown field"))
            return out

        ns = self._register(schema, namespace, check)
        for f in schema["fields"]:
            ftype = f["type"]
            nullable = ftype == "null" or (isinstance(ftype, list) and "null" in ftype)
            default = f.get("default", _MISSING)
            fields.append((f["name"], self.compile(ftype, ns, f), default, nullable))
            known.add(f["name"])
        return check

    def _enum(self, schema: dict[str, Any], namespace: str) -> Check:
        symbols = list(schema["symbols"])
        allowed = frozenset(symbols)
        rule = f"must be one of {', '.join(symbols)}"

        def check(value: Any, path: str, errors: Errors) -> Any:
            if not isinstance(value, str) or value not in allowed:
                errors.append(FieldError(path, rule))
                return None
            return value

        self._register(schema, namespace, check)
        return check

    def _array(self, schema: dict[str, Any], namespace: str) -> Check:
        item = self.compile(schema["items"], namespace)

        def check(value: Any, path: str, errors: Errors) -> Any:
            if not isinstance(value, list):
                errors.append(FieldError(path, "must be an array"))
                return None
            return [item(v, f"{path}[{i}]", errors) for i, v in enumerate(value)]

        return check

    def _map(self, schema: dict[str, Any], namespace: str) -> Check:
        values = self.compile(schema["values"], namespace)

        def check(value: Any, path: str, errors: Errors) -> Any:
            if not isinstance(value, dict):
                errors.append(FieldError(path, "must be an object"))
                return None
            for k in value:
                if "\x00" in k:
                    errors.append(FieldError(f"{path}.{k.replace(chr(0), '?')}", NUL_RULE))
            return {k: values(v, f"{path}.{k}", errors) for k, v in value.items()}

        return check

    def _union(self, branches: list[Any], namespace: str) -> Check:
        non_null = [b for b in branches if b != "null"]
        has_null = len(non_null) < len(branches)
        compiled = [self.compile(b, namespace) for b in non_null]
        if len(compiled) == 1:
            only = compiled[0]

            def single(value: Any, path: str, errors: Errors) -> Any:
                if value is None:
                    if not has_null:
                        errors.append(FieldError(path, "must not be null"))
                    return None
                return only(value, path, errors)

            return single
        rule = "must be " + " or ".join(_describe(b) for b in branches)

        def many(value: Any, path: str, errors: Errors) -> Any:
            if value is None and has_null:
                return None
            for sub in compiled:
                trial: Errors = []
                out = sub(value, path, trial)
                if not trial:
                    return out
            errors.append(FieldError(path, rule))
            return None

        return many


def _rule(ok: Callable[[Any], bool], message: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if ok(value) else message

    return check


def _with_constraints(base: Check, field: dict[str, Any]) -> Check:
    checks: list[Callable[[Any], str | None]] = []
    lo, hi = field.get("min"), field.get("max")
    if lo is not None:
        checks.append(_rule(lambda v: not _is_num(v) or bool(v >= lo), f"must be >= {lo}"))
    if hi is not None:
        checks.append(_rule(lambda v: not _is_num(v) or bool(v <= hi), f"must be <= {hi}"))
    min_len, max_len = field.get("minLength"), field.get("maxLength")
    if min_len is not None:
        msg = "must not be empty" if min_len == 1 else f"must be at least {min_len} characters"
        checks.append(_rule(lambda v: not isinstance(v, str) or len(v) >= min_len, msg))
    if max_len is not None:
        checks.append(
            _rule(
                lambda v: not isinstance(v, str) or len(v) <= max_len,
                f"must be at most {max_len} characters",
            )
        )
    pattern = field.get("pattern")
    if pattern is not None:
        rx = re.compile(pattern)
        checks.append(
            _rule(
                lambda v: not isinstance(v, str) or rx.fullmatch(v) is not None,
                f"must match {pattern}",
            )
        )
    min_items, max_items = field.get("minItems"), field.get("maxItems")
    if min_items is not None:
        checks.append(
            _rule(
                lambda v: not isinstance(v, list) or len(v) >= min_items,
                f"must have at least {min_items} item{'s' if min_items != 1 else ''}",
            )
        )
    if max_items is not None:
        checks.append(
            _rule(
                lambda v: not isinstance(v, list) or len(v) <= max_items,
                f"must have at most {max_items} items",
            )
        )
    if not checks:
        return base

    def check(value: Any, path: str, errors: Errors) -> Any:
        before = len(errors)
        out = base(value, path, errors)
        if len(errors) == before and value is not None:
            for c in checks:
                rule = c(value)
                if rule:
                    errors.append(FieldError(path, rule))
        return out

    return check


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


#: no store of the pipeline can hold U+0000 in a text (PostgreSQL's text and jsonb refuse it):
#: refused at the door, not dead-lettered after a 202
NUL_RULE = "must not contain the NUL character (U+0000)"


def _string(value: Any, path: str, errors: Errors) -> Any:
    if not isinstance(value, str):
        errors.append(FieldError(path, "must be a string"))
        return None
    if "\x00" in value:
        errors.append(FieldError(path, NUL_RULE))
        return None
    return value


def _int_range(lo: int, hi: int) -> Check:
    def check(value: Any, path: str, errors: Errors) -> Any:
        if not isinstance(value, int) or isinstance(value, bool):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                errors.append(FieldError(path, "must be an integer"))
                return None
        if not lo <= value <= hi:
            errors.append(FieldError(path, f"must be between {lo} and {hi}"))
            return None
        return value

    return check


def _number(value: Any, path: str, errors: Errors) -> Any:
    if not _is_num(value):
        errors.append(FieldError(path, "must be a number"))
        return None
    return float(value)


def _boolean(value: Any, path: str, errors: Errors) -> Any:
    if not isinstance(value, bool):
        errors.append(FieldError(path, "must be a boolean"))
        return None
    return value


def _null(value: Any, path: str, errors: Errors) -> Any:
    if value is not None:
        errors.append(FieldError(path, "must be null"))
    return None


def _timestamp(value: Any, path: str, errors: Errors) -> Any:
    rule = "must be an ISO 8601 timestamp with a timezone"
    if not isinstance(value, str):
        errors.append(FieldError(path, rule))
        return None
    try:
        ts = datetime.fromisoformat(value)
    except ValueError:
        errors.append(FieldError(path, rule))
        return None
    if ts.tzinfo is None:
        errors.append(FieldError(path, rule))
        return None
    return ts


def _uuid(value: Any, path: str, errors: Errors) -> Any:
    if not isinstance(value, str):
        errors.append(FieldError(path, "must be a UUID"))
        return None
    try:
        return str(uuid.UUID(value))
    except ValueError:
        errors.append(FieldError(path, "must be a UUID"))
        return None


_PRIMITIVES: dict[str, Check] = {
    "string": _string,
    "int": _int_range(*_INT32),
    "long": _int_range(*_INT64),
    "float": _number,
    "double": _number,
    "boolean": _boolean,
    "null": _null,
}


class Validator:
    """A compiled schema: `convert(value, path)` -> (datum, errors)."""

    def __init__(self, schema: Any) -> None:
        self._check = _Compiler().compile(schema)

    def convert(self, value: Any, path: str = "") -> tuple[Any, list[FieldError]]:
        errors: list[FieldError] = []
        out = self._check(value, path, errors)
        return out, errors


def compile_schema(schema: Any) -> Validator:
    return Validator(schema)
