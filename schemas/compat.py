"""The compatibility gate: may the schemas in this checkout replace what came before?

Each event schema is compared with its previous version, from two places:
- the git merge-base (so a fresh, empty registry still checks something), and
- the configured registry's latest version of its subject (when reachable).

The rules, per subject:
- BACKWARD (the registry's rule): a reader with the new schema reads events written with the
  old one: a field added without a default, or a type changed incompatibly, fails.
- No field without a default may disappear: consumers still on the old schema (analytics teams'
  jobs) would fail on new events (that is FORWARD compatibility for such fields).
Messages name the subject, the field and the rule.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import avro.schema
from avro.compatibility import (
    ReaderWriterCompatibilityChecker,
    SchemaCompatibilityType,
    SchemaIncompatibilityType,
)

__all__ = ["Incompatibility", "check_pair", "schemas_at_ref", "resolve_base"]


@dataclass(frozen=True)
class Incompatibility:
    subject: str
    field: str
    rule: str
    against: str  # "git <ref>" or "registry"

    def __str__(self) -> str:
        return f"{self.subject}: field {self.field}: {self.rule} (against {self.against})"


def _walk(schema: Any, location: list[str]) -> str:
    """Turn an avro location (`/fields/5/type/fields/2`) into a field path (`data.items[].qty`)."""
    path: list[str] = []
    node = schema
    i = 0
    while i < len(location):
        step = location[i]
        if step == "fields" and i + 1 < len(location) and isinstance(node, dict):
            field = node["fields"][int(location[i + 1])]
            path.append(field["name"])
            node = field
            i += 2
            continue
        if step == "type" and isinstance(node, dict):
            node = node["type"]
        elif step == "items" and isinstance(node, dict):
            path[-1:] = [f"{path[-1]}[]"] if path else ["[]"]
            node = node["items"]
        elif step == "values" and isinstance(node, dict):
            path.append("*")
            node = node["values"]
        elif step.isdigit() and isinstance(node, list):
            node = node[int(step)]
        i += 1
        # step through unions transparently: pick the record branch, if any
        if isinstance(node, list):
            records = [b for b in node if isinstance(b, dict)]
            if records and i < len(location) and location[i] == "fields":
                node = records[0]
    return ".".join(path) or "(schema)"


_RULES = {
    SchemaIncompatibilityType.reader_field_missing_default_value: "added without a default",
    SchemaIncompatibilityType.type_mismatch: "type changed incompatibly",
    SchemaIncompatibilityType.missing_enum_symbols: "enum symbols removed",
    SchemaIncompatibilityType.missing_union_branch: "union branch removed",
    SchemaIncompatibilityType.name_mismatch: "named type renamed",
    SchemaIncompatibilityType.fixed_size_mismatch: "fixed size changed",
}


def _problems(reader: dict[str, Any], writer: dict[str, Any]) -> list[tuple[str, str, str]]:
    r = avro.schema.parse(json.dumps(reader))
    w = avro.schema.parse(json.dumps(writer))
    checker = ReaderWriterCompatibilityChecker()  # type: ignore[no-untyped-call]
    result = checker.get_compatibility(r, w)
    if result.compatibility is SchemaCompatibilityType.compatible:
        return []
    kinds = result.incompatibilities or [SchemaIncompatibilityType.type_mismatch]
    out = []
    for loc in sorted(result.locations):
        parts = [p for p in loc.split("/") if p]
        out.append(
            (
                _walk(reader, parts),
                _RULES.get(kinds[0], kinds[0].value),
                "; ".join(sorted(result.messages)),
            )
        )
    return out


def _removed_without_default(
    new: Any, old: Any, path: str, new_names: dict[str, Any], old_names: dict[str, Any]
) -> list[str]:
    """Paths of fields present in `old` without a default and absent from `new` (recursively)."""
    new = _resolve(new, new_names)
    old = _resolve(old, old_names)
    if isinstance(new, list) or isinstance(old, list):
        new_recs = [
            b for b in (new if isinstance(new, list) else [new]) if _is_record(b, new_names)
        ]
        old_recs = [
            b for b in (old if isinstance(old, list) else [old]) if _is_record(b, old_names)
        ]
        if len(new_recs) == 1 and len(old_recs) == 1:
            return _removed_without_default(new_recs[0], old_recs[0], path, new_names, old_names)
        return []
    if not (isinstance(new, dict) and isinstance(old, dict)):
        return []
    if new.get("type") == "array" and old.get("type") == "array":
        return _removed_without_default(
            new["items"], old["items"], f"{path}[]", new_names, old_names
        )
    if new.get("type") == "map" and old.get("type") == "map":
        return _removed_without_default(
            new["values"], old["values"], f"{path}.*", new_names, old_names
        )
    if new.get("type") != "record" or old.get("type") != "record":
        return []
    found: list[str] = []
    new_fields = {f["name"]: f for f in new["fields"]}
    for f in old["fields"]:
        sub = f"{path}.{f['name']}" if path else f["name"]
        if f["name"] not in new_fields:
            if "default" not in f:
                found.append(sub)
            continue
        found += _removed_without_default(
            new_fields[f["name"]]["type"], f["type"], sub, new_names, old_names
        )
    return found


def _names(schema: Any, out: dict[str, Any]) -> dict[str, Any]:
    if isinstance(schema, list):
        for b in schema:
            _names(b, out)
    elif isinstance(schema, dict):
        if schema.get("type") in ("record", "enum", "fixed"):
            out[schema["name"]] = schema
        for f in schema.get("fields", []):
            _names(f["type"], out)
        for k in ("items", "values"):
            if k in schema:
                _names(schema[k], out)
        if isinstance(schema.get("type"), (dict, list)):
            _names(schema["type"], out)
    return out


def _resolve(schema: Any, names: dict[str, Any]) -> Any:
    if isinstance(schema, str):
        return names.get(schema.rsplit(".", 1)[-1], schema)
    if isinstance(schema, dict) and isinstance(schema.get("type"), (dict, list)):
        return _resolve(schema["type"], names)
    return schema


def _is_record(schema: Any, names: dict[str, Any]) -> bool:
    s = _resolve(schema, names)
    return isinstance(s, dict) and s.get("type") == "record"


def check_pair(
    subject: str, new: dict[str, Any], old: dict[str, Any], against: str
) -> list[Incompatibility]:
    """What stops `new` from replacing `old` under the gate's rules."""
    found = [
        Incompatibility(subject, field, f"BACKWARD: {rule} ({msg})", against)
        for field, rule, msg in _problems(new, old)
    ]
    for field in _removed_without_default(new, old, "", _names(new, {}), _names(old, {})):
        found.append(
            Incompatibility(
                subject,
                field,
                "removed, and it has no default: consumers on the previous schema cannot read "
                "new events (FORWARD)",
                against,
            )
        )
    return found


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(  # noqa: S603
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True
    ).stdout.strip()


def resolve_base(repo: Path, base: str | None) -> str | None:
    """The commit to compare with: merge-base of HEAD and `base` (default: origin/main, else
    main). Without an explicit base, when that is HEAD itself (CI on main), HEAD's parent:
    what main had before this commit."""
    try:
        head = _git(repo, "rev-parse", "HEAD")
    except subprocess.CalledProcessError:
        return None
    candidates = [base] if base else ["origin/main", "main"]
    for ref in candidates:
        try:
            mb = _git(repo, "merge-base", "HEAD", ref)
        except subprocess.CalledProcessError:
            continue
        if mb != head or base:
            return mb  # an explicit base is taken as it is (`--base HEAD`: uncommitted changes)
        try:
            return _git(repo, "rev-parse", "HEAD~1")
        except subprocess.CalledProcessError:
            return None
    return None


def schemas_at_ref(repo: Path, ref: str, schema_files: dict[str, str]) -> dict[str, dict[str, Any]]:
    """{event type: schema} as committed at `ref` (types new since then are absent)."""
    out: dict[str, dict[str, Any]] = {}
    for name, rel in schema_files.items():
        try:
            text = _git(repo, "show", f"{ref}:schemas/avro/{rel}")
        except subprocess.CalledProcessError:
            continue
        out[name] = json.loads(text)
    return out
