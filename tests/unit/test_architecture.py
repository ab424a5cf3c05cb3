"""The dependency direction: core <- schemas <- connectors <- (streams, api) <- mohallamart (the
CLI), as the import-linter contracts in pyproject.toml state it, and no settings read at import.

`lint-imports` runs as `make lint` does; the planted imports prove the contracts catch a
violation (in a copy of the packages, put first on the path so the copy is what is analysed, not
the installed editable packages)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from core.settings import PROJECT_ROOT

PACKAGES = ("core", "schemas", "connectors", "api", "streams", "mohallamart")
LAYERS_CONTRACT = "Arrows point down: mohallamart > api | streams > connectors > schemas > core"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    assert LINT_IMPORTS.exists(), f"{LINT_IMPORTS} missing: install the dev extra (make install)"
    path = os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_tree_keeps_every_contract() -> None:
    result = _lint_imports(PROJECT_ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{LAYERS_CONTRACT} KEPT" in result.stdout
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "planted", "chain"),
    [
        ("streams/offsets.py", "import api.main", "streams.offsets -> api.main"),
        ("connectors/base.py", "import streams", "connectors.base -> streams"),
        ("schemas/catalog.py", "from connectors import db", "schemas.catalog -> connectors.db"),
        ("core/errors.py", "import schemas.catalog", "core.errors -> schemas.catalog"),
        ("api/deps.py", "import mohallamart.cli", "api.deps -> mohallamart.cli"),
    ],
)
def test_a_forbidden_import_breaks_the_contract(
    tmp_path: Path, module: str, planted: str, chain: str
) -> None:
    for package in PACKAGES:
        shutil.copytree(
            PROJECT_ROOT / package,
            tmp_path / package,
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
        )
    shutil.copy(PROJECT_ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    # inside a function: a lazy import counts as much as one at the top
    with (tmp_path / module).open("a") as f:
        f.write(f"\n\ndef _planted() -> None:\n    {planted}  # noqa\n")

    result = _lint_imports(tmp_path)
    assert result.returncode != 0, result.stdout
    assert f"{LAYERS_CONTRACT} BROKEN" in result.stdout
    assert chain in result.stdout, result.stdout


def test_no_module_reads_the_settings_at_import() -> None:
    """Every module of ours imports with settings that cannot be read (an invalid value): none
    reads them before it is asked to do something."""
    script = textwrap.dedent(
        f"""
        import importlib, pkgutil
        for package in {PACKAGES!r}:
            root = importlib.import_module(package)
            for info in pkgutil.walk_packages(root.__path__, package + "."):
                importlib.import_module(info.name)
        from core.settings import get_settings
        assert get_settings.cache_info().currsize == 0, "get_settings() called at import"
        from schemas.catalog import TOPICS
        try:
            TOPICS["order"]
        except Exception as exc:
            print(type(exc).__name__)
        """
    )
    env = {**os.environ, "TOPIC_NAMESPACE": "Not A Namespace"}
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    # the settings are read on first use, and refused there
    assert result.stdout.strip() == "ValidationError"
