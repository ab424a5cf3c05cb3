"""Finding a JDK: JAVA_HOME when new enough, else the newest in the JVM folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import StackError
from mohallamart.stack.java import find_jdk


def _jdk(root: Path, name: str, version: str) -> Path:
    home = root / name
    (home / "bin").mkdir(parents=True)
    (home / "bin" / "java").touch()
    (home / "release").write_text(f'JAVA_VERSION="{version}"\n')
    return home


def test_java_home_wins_when_new_enough(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = _jdk(tmp_path / "a", "jdk21", "21.0.5")
    _jdk(tmp_path / "jvm", "jdk25", "25.0.1")
    monkeypatch.setenv("JAVA_HOME", str(home))
    assert find_jdk(21, jvm_dirs=str(tmp_path / "jvm"), purpose="x").home == home


def test_too_old_java_home_falls_back_to_newest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JAVA_HOME", str(_jdk(tmp_path / "a", "jdk17", "17.0.15")))
    _jdk(tmp_path / "jvm", "jdk21", "21.0.5")
    newest = _jdk(tmp_path / "jvm", "jdk25", "25.0.1")
    jdk = find_jdk(21, jvm_dirs=str(tmp_path / "jvm"), purpose="x")
    assert (jdk.home, jdk.major) == (newest, 25)


def test_none_found_names_what_was_seen_and_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("JAVA_HOME", raising=False)
    _jdk(tmp_path / "jvm", "java-8", "1.8.0_392")
    _jdk(tmp_path / "jvm", "java-17", "17.0.15")
    with pytest.raises(StackError) as exc:
        find_jdk(21, jvm_dirs=str(tmp_path / "jvm"), purpose="Apicurio Registry 3.3.3")
    text = str(exc.value)
    assert "Apicurio Registry 3.3.3 needs a JDK >= 21" in text
    assert "(Java 8)" in text and "(Java 17)" in text
    assert "openjdk-21" in text and "JAVA_HOME" in text
