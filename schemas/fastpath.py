"""Validate-and-encode in one generated function per schema: the ingest hot path for valid input.

`compile_fast(schema)` turns a record schema into Python source (straight-line code, no loops over
field tables) that checks a client's JSON value against the schema and its constraint attributes
and appends its Avro binary encoding to a bytearray, in one pass. It never explains: on anything
unexpected it raises `Reject`, and the caller runs the full `schemas.validate.Validator`, which
names every bad field. So it must accept exactly what the Validator accepts, or less — never more;
tests/unit/test_fast_encode.py checks both the bytes and the refusals.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from schemas.encoder import _DOUBLE, _FLOAT, _long

__all__ = ["Reject", "compile_fast"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Reject(Exception):  # noqa: N818 - a signal, not an error a person sees
    """The value is not plainly valid: run the full validator for the field errors."""


def _ts_millis(v: Any) -> int:
    if type(v) is not str:
        raise Reject
    ts = datetime.fromisoformat(v)  # ValueError -> caught by the caller as a reject
    if ts.tzinfo is None:
        raise Reject
    d = ts - _EPOCH
    return (d.days * 86_400 + d.seconds) * 1000 + d.microseconds // 1000


class _Gen:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.consts: dict[str, Any] = {}
        self.named: dict[str, dict[str, Any]] = {}
        self.n = 0

    def var(self, prefix: str = "v") -> str:
        self.n += 1
        return f"{prefix}{self.n}"

    def const(self, value: Any) -> str:
        name = f"C{len(self.consts)}"
        self.consts[name] = value
        return name

    def emit(self, depth: int, line: str) -> None:
        self.lines.append("    " * depth + line)

    def resolve(self, schema: Any, ns: str) -> Any:
        if isinstance(schema, str) and schema not in _PRIMS:
            full = schema if "." in schema else f"{ns}.{schema}" if ns else schema
            return self.named.get(full) or self.named[schema]
        return schema

    def register(self, schema: dict[str, Any], ns: str) -> str:
        new_ns = schema.get("namespace", ns)
        name = schema["name"]
        full = name if "." in name else f"{new_ns}.{name}" if new_ns else name
        self.named[full] = schema
        self.named[name] = schema
        return str(new_ns)

    # --- code for one value -----------------------------------------------------------------
    def value(self, schema: Any, x: str, depth: int, ns: str, field: dict[str, Any]) -> None:
        schema = self.resolve(schema, ns)
        if isinstance(schema, list):
            self.union(schema, x, depth, ns, field)
            return
        t = schema if isinstance(schema, str) else schema["type"]
        logical = schema.get("logicalType") if isinstance(schema, dict) else None
        if t == "long" and logical == "timestamp-millis":
            self.emit(depth, f"_long(buf, _ts_millis({x}))")
        elif t == "string" and logical == "uuid":
            self.emit(
                depth,
                f"if type({x}) is not str or not {self.const(_UUID)}.match({x}): raise Reject",
            )
            self.string_bytes(x, depth)
        elif t == "string":
            self.emit(depth, f"if type({x}) is not str or '\\x00' in {x}: raise Reject")
            lo, hi, pat = field.get("minLength"), field.get("maxLength"), field.get("pattern")
            if lo is not None:
                self.emit(depth, f"if len({x}) < {int(lo)}: raise Reject")
            if hi is not None:
                self.emit(depth, f"if len({x}) > {int(hi)}: raise Reject")
            if pat is not None:
                self.emit(
                    depth, f"if not {self.const(re.compile(pat))}.fullmatch({x}): raise Reject"
                )
            self.string_bytes(x, depth)
        elif t in ("int", "long"):
            bound = 2**31 if t == "int" else 2**63
            self.emit(
                depth, f"if type({x}) is not int or not {-bound} <= {x} < {bound}: raise Reject"
            )
            self.bounds(x, depth, field)
            self.emit(depth, f"_long(buf, {x})")
        elif t in ("float", "double"):
            self.emit(depth, f"if type({x}) is not float and type({x}) is not int: raise Reject")
            self.bounds(x, depth, field)
            self.emit(depth, f"buf += {'_FLOAT' if t == 'float' else '_DOUBLE'}({x})")
        elif t == "boolean":
            self.emit(depth, f"if type({x}) is not bool: raise Reject")
            self.emit(depth, f"buf.append(1 if {x} else 0)")
        elif t == "null":
            self.emit(depth, f"if {x} is not None: raise Reject")
        elif t == "enum":
            self.register(schema, ns)
            index = {s: i for i, s in enumerate(schema["symbols"])}
            i = self.var("i")
            self.emit(depth, f"{i} = {self.const(index)}.get({x}) if type({x}) is str else None")
            self.emit(depth, f"if {i} is None: raise Reject")
            self.emit(depth, f"_long(buf, {i})")
        elif t == "array":
            self.emit(depth, f"if type({x}) is not list: raise Reject")
            lo, hi = field.get("minItems"), field.get("maxItems")
            if lo is not None:
                self.emit(depth, f"if len({x}) < {int(lo)}: raise Reject")
            if hi is not None:
                self.emit(depth, f"if len({x}) > {int(hi)}: raise Reject")
            self.emit(depth, f"if {x}:")
            self.emit(depth + 1, f"_long(buf, len({x}))")
            y = self.var("y")
            self.emit(depth + 1, f"for {y} in {x}:")
            self.value(schema["items"], y, depth + 2, ns, {})
            self.emit(depth, "buf.append(0)")
        elif t == "map":
            self.emit(depth, f"if type({x}) is not dict: raise Reject")
            self.emit(depth, f"if {x}:")
            self.emit(depth + 1, f"_long(buf, len({x}))")
            k, y = self.var("k"), self.var("y")
            self.emit(depth + 1, f"for {k}, {y} in {x}.items():")
            self.emit(depth + 2, f"if '\\x00' in {k}: raise Reject")
            self.string_bytes(k, depth + 2)
            self.value(schema["values"], y, depth + 2, ns, {})
            self.emit(depth, "buf.append(0)")
        elif t == "record":
            self.record(schema, x, depth, ns)
        else:
            raise ValueError(f"unsupported Avro type {schema!r}")

    def string_bytes(self, x: str, depth: int) -> None:
        b = self.var("b")
        self.emit(depth, f"{b} = {x}.encode()")
        self.emit(depth, f"_long(buf, len({b}))")
        self.emit(depth, f"buf += {b}")

    def bounds(self, x: str, depth: int, field: dict[str, Any]) -> None:
        if field.get("min") is not None:
            self.emit(depth, f"if {x} < {field['min']!r}: raise Reject")
        if field.get("max") is not None:
            self.emit(depth, f"if {x} > {field['max']!r}: raise Reject")

    def union(
        self, branches: list[Any], x: str, depth: int, ns: str, field: dict[str, Any]
    ) -> None:
        if len(branches) != 2 or "null" not in branches:
            raise ValueError("only [null, T] unions are used in this contract")
        null_at = branches.index("null")
        self.emit(depth, f"if {x} is None:")
        self.emit(depth + 1, f"buf.append({null_at * 2})")
        self.emit(depth, "else:")
        self.emit(depth + 1, f"buf.append({(1 - null_at) * 2})")
        self.value(branches[1 - null_at], x, depth + 1, ns, field)

    def record(self, schema: dict[str, Any], x: str, depth: int, ns: str) -> None:
        ns = self.register(schema, ns)
        names = frozenset(f["name"] for f in schema["fields"])
        self.emit(
            depth,
            f"if type({x}) is not dict or not {self.const(names)}.issuperset({x}): raise Reject",
        )
        for f in schema["fields"]:
            y = self.var()
            ftype = f["type"]
            nullable = ftype == "null" or (isinstance(ftype, list) and "null" in ftype)
            if "default" in f:
                self.emit(depth, f"{y} = {x}.get({f['name']!r}, {self.const(f['default'])})")
            else:
                self.emit(depth, f"{y} = {x}.get({f['name']!r}, MISSING)")
                self.emit(depth, f"if {y} is MISSING: raise Reject")
            if not nullable:
                self.emit(depth, f"if {y} is None: raise Reject")
            self.value(ftype, y, depth, ns, f)


_PRIMS = frozenset({"null", "boolean", "int", "long", "float", "double", "string", "bytes"})
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")


def compile_fast(schema: dict[str, Any], namespace: str = "") -> Callable[[bytearray, Any], None]:
    """`check_and_write(buf, value)`: append `value`'s Avro encoding, or raise `Reject`."""
    gen = _Gen()
    gen.emit(0, "def check_and_write(buf, v0):")
    gen.record(schema, "v0", 1, namespace)
    source = "\n".join(gen.lines)
    scope: dict[str, Any] = {
        "Reject": Reject,
        "MISSING": object(),
        "_long": _long,
        "_ts_millis": _ts_millis,
        "_FLOAT": _FLOAT,
        "_DOUBLE": _DOUBLE,
        **gen.consts,
    }
    exec(compile(source, f"<fast encoder {schema.get('name')}>", "exec"), scope)  # noqa: S102
    fn: Callable[[bytearray, Any], None] = scope["check_and_write"]
    return fn
