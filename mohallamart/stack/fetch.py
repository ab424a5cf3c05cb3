"""Fetch the JVM services' artifacts from Maven Central with Maven, once, into a cache."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

from core.errors import StackError

__all__ = ["fetch_apicurio", "fetch_kafka"]

_log = logging.getLogger(__name__)

# log4j-slf4j-impl: Kafka 4.1 ships slf4j 1.7, so the 1.7 binding (not log4j-slf4j2-impl).
_KAFKA_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.mohallamart</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
      <version>{version}</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId>
      <version>{version}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId>
      <version>2.24.3</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId>
      <version>2.24.3</version></dependency>
  </dependencies>
</project>
"""


def _mvn() -> str:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise StackError(
            "Maven (`mvn`) is needed once to fetch the Kafka and Apicurio Registry artifacts from "
            "Maven Central: install it (Debian/Ubuntu: `apt-get install maven`)"
        )
    return mvn


Echo = Callable[[str], None]


def _run_mvn(args: list[str], what: str, cwd: Path, java_home: Path, echo: Echo) -> None:
    started = time.monotonic()
    echo(f"fetching {what} from Maven Central with Maven (first run only) ...")
    proc = subprocess.run(  # noqa: S603
        [_mvn(), "-B", "-q", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "JAVA_HOME": str(java_home)},
    )
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-20:])
        raise StackError(f"Maven could not fetch {what} (exit {proc.returncode}):\n{tail}")
    echo(f"fetched {what} in {time.monotonic() - started:.1f} s")


def fetch_kafka(cache: Path, version: str, java_home: Path, echo: Echo = _log.info) -> Path:
    """The folder of Kafka's runtime jars (kafka_2.13, tools, a log4j2 binding)."""
    home = cache / f"kafka-{version}"
    libs = home / "libs"
    done = home / ".complete"
    if done.exists():
        return libs
    home.mkdir(parents=True, exist_ok=True)
    (home / "pom.xml").write_text(_KAFKA_POM.format(version=version))
    shutil.rmtree(libs, ignore_errors=True)
    _run_mvn(
        ["dependency:copy-dependencies", f"-DoutputDirectory={libs}", "-DincludeScope=runtime"],
        f"Apache Kafka {version} jars (~54 MB)",
        home,
        java_home,
        echo,
    )
    done.touch()
    return libs


def fetch_apicurio(cache: Path, version: str, java_home: Path, echo: Echo = _log.info) -> Path:
    """The unpacked Apicurio Registry app folder (holds quarkus-run.jar)."""
    home = cache / f"apicurio-registry-{version}"
    app = home / "app"
    done = home / ".complete"
    if done.exists():
        return app
    home.mkdir(parents=True, exist_ok=True)
    download = home / "download"
    shutil.rmtree(download, ignore_errors=True)
    _run_mvn(
        [
            "dependency:copy",
            f"-Dartifact=io.apicurio:apicurio-registry-app:{version}:tar.gz:all",
            f"-DoutputDirectory={download}",
        ],
        f"Apicurio Registry {version} (~160 MB)",
        home,
        java_home,
        echo,
    )
    shutil.rmtree(app, ignore_errors=True)
    app.mkdir()
    for archive in download.glob("*.tar.gz"):
        with tarfile.open(archive) as tar:
            tar.extractall(app, filter="data")
    if not (app / "quarkus-run.jar").exists():
        raise StackError(f"the Apicurio Registry archive in {download} has no quarkus-run.jar")
    shutil.rmtree(download, ignore_errors=True)
    done.touch()
    return app
