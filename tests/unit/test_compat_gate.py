"""The compatibility gate, through its command, against a git baseline (no registry needed:
an empty registry still has git to compare with)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from core.settings import PROJECT_ROOT
from schemas.catalog import EVENT_TYPES
from schemas.compat import check_pair

_NAME = sorted(EVENT_TYPES)[0]
_FILE = EVENT_TYPES[_NAME].schema_file


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)  # noqa: S603


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git checkout holding this project's schemas, committed once."""
    shutil.copytree(PROJECT_ROOT / "schemas" / "avro", tmp_path / "schemas" / "avro")
    _git(tmp_path, "init", "-q", "-b", "main")
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "base")
    return tmp_path


def _edit(repo: Path, change: Any) -> dict[str, Any]:
    path = repo / "schemas" / "avro" / _FILE
    schema = json.loads(path.read_text())
    change(schema)
    path.write_text(json.dumps(schema, indent=2))
    return schema


def _data_fields(schema: dict[str, Any]) -> list[dict[str, Any]]:
    data = next(f for f in schema["fields"] if f["name"] == "data")
    return data["type"]["fields"]  # type: ignore[no-any-return]


def _check(repo: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603
        [
            sys.executable,
            "-m",
            "mohallamart.cli",
            "schemas",
            "check",
            "--no-registry",
            "--base",
            "HEAD",
            "--repo",
            str(repo),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ),
    )


def test_unchanged_schemas_pass(repo: Path) -> None:
    res = _check(repo)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"compared {len(EVENT_TYPES)} schema(s)" in res.stdout


def test_adding_an_optional_field_with_a_default_passes(repo: Path) -> None:
    _edit(
        repo,
        lambda s: _data_fields(s).append(
            {"name": "gift_note", "type": ["null", "string"], "default": None}
        ),
    )
    res = _check(repo)
    assert res.returncode == 0, res.stdout + res.stderr


def test_adding_a_required_field_fails_naming_it(repo: Path) -> None:
    _edit(repo, lambda s: _data_fields(s).append({"name": "gift_note", "type": "string"}))
    res = _check(repo)
    assert res.returncode == 1
    assert EVENT_TYPES[_NAME].subject in res.stderr
    assert "data.gift_note" in res.stderr and "BACKWARD" in res.stderr


def test_removing_a_field_without_default_fails_naming_it(repo: Path) -> None:
    removed: list[str] = []

    def drop(schema: dict[str, Any]) -> None:
        fields = _data_fields(schema)
        victim = next(
            f for f in fields if "default" not in f and f["name"] != EVENT_TYPES[_NAME].key_field
        )
        removed.append(victim["name"])
        fields.remove(victim)

    _edit(repo, drop)
    res = _check(repo)
    assert res.returncode == 1
    assert f"data.{removed[0]}" in res.stderr
    assert "removed, and it has no default" in res.stderr


def test_changing_a_field_type_fails_naming_it(repo: Path) -> None:
    changed: list[str] = []

    def retype(schema: dict[str, Any]) -> None:
        f = next(
            f
            for f in _data_fields(schema)
            if f["type"] == "string"
            or (isinstance(f["type"], dict) and f["type"].get("type") == "string")
        )
        f["type"] = "boolean"
        changed.append(f["name"])

    _edit(repo, retype)
    res = _check(repo)
    assert res.returncode == 1
    assert f"data.{changed[0]}" in res.stderr
    assert "type changed incompatibly" in res.stderr


def test_check_pair_names_nested_fields() -> None:
    old = {
        "type": "record",
        "name": "R",
        "fields": [
            {
                "name": "items",
                "type": {
                    "type": "array",
                    "items": {
                        "type": "record",
                        "name": "I",
                        "fields": [{"name": "qty", "type": "int"}],
                    },
                },
            }
        ],
    }
    new = json.loads(json.dumps(old))
    new["fields"][0]["type"]["items"]["fields"][0]["type"] = "string"
    found = check_pair("s", new, old, "git x")
    assert found and found[0].field == "items[].qty"
