"""Find a JDK of a given major version: JAVA_HOME first, then the system's JVM folders."""

from __future__ import annotations

import os
import re
from pathlib import Path

from core.errors import StackError

__all__ = ["Jdk", "find_jdk"]

_INSTALL_HINT = (
    "install one (Debian/Ubuntu: `apt-get install openjdk-21-jdk-headless`, or any Temurin 21+ "
    "build) and point JAVA_HOME at it"
)


class Jdk:
    """A JDK folder and its major version."""

    def __init__(self, home: Path, major: int) -> None:
        self.home = home
        self.major = major

    @property
    def java(self) -> Path:
        return self.home / "bin" / "java"

    def __repr__(self) -> str:
        return f"Jdk({str(self.home)!r}, {self.major})"


def _major(home: Path) -> int | None:
    release = home / "release"
    if not (home / "bin" / "java").exists():
        return None
    try:
        text = release.read_text()
    except OSError:
        return None
    m = re.search(r'^JAVA_VERSION="(\d+)(?:\.(\d+))?', text, re.MULTILINE)
    if not m:
        return None
    major = int(m.group(1))
    if major == 1 and m.group(2):  # "1.8.0_392"
        major = int(m.group(2))
    return major


def _candidates(jvm_dirs: str) -> list[Path]:
    found: list[Path] = []
    for folder in filter(None, jvm_dirs.split(":")):
        root = Path(folder)
        if not root.is_dir():
            continue
        for child in sorted(root.iterdir()):
            home = child / "Contents" / "Home" if (child / "Contents" / "Home").is_dir() else child
            if home.is_dir() and not home.is_symlink():
                found.append(home)
    return found


def find_jdk(min_major: int, *, jvm_dirs: str, purpose: str) -> Jdk:
    """The JDK to run `purpose` with: JAVA_HOME if it is new enough, else the newest found.

    Raises StackError naming what was found and what to install.
    """
    seen: list[str] = []
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        major = _major(Path(java_home))
        if major is not None and major >= min_major:
            return Jdk(Path(java_home), major)
        seen.append(f"JAVA_HOME={java_home} (Java {major if major is not None else '?'})")
    best: Jdk | None = None
    for home in _candidates(jvm_dirs):
        major = _major(home)
        if major is None:
            continue
        seen.append(f"{home} (Java {major})")
        if major >= min_major and (best is None or major > best.major):
            best = Jdk(home, major)
    if best is None:
        found = "; ".join(seen) if seen else f"no JDK under {jvm_dirs} and JAVA_HOME unset"
        raise StackError(
            f"{purpose} needs a JDK >= {min_major}, and none was found ({found}): "
            f"{_INSTALL_HINT.replace('21', str(min_major))}"
        )
    return best
