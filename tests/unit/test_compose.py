"""docker-compose.yml and the Dockerfile stay reproducible, healthy, complete and free of secrets.

No Docker is needed (nor run): the files are parsed and checked against the code, chiefly that
the `api` and `worker` services receive every setting `core.settings.Settings` reads.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from core.settings import Settings

PROJECT_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = PROJECT_ROOT / "docker-compose.yml"
DOCKERFILE = PROJECT_ROOT / "Dockerfile"

APP_SERVICES = (
    "api",
    "worker",
    "worker-stock",
    "worker-cache",
    "worker-search",
    "worker-workflows",
    "worker-notifications",
    "worker-jobs",
    "worker-analytics",
)
SECRET_NAME_PARTS = ("PASSWORD", "SECRET", "API_KEY")
# A whole value that is one compose interpolation: ${VAR}, ${VAR:?message}, ${VAR?message}...
INTERPOLATION = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*(?:[:]?[?\-+][^}]*)?\}$")
# scheme://user:password@host — the password part, wherever it appears in a value.
URL_CREDENTIALS = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^/\s:@]*:(?P<password>[^@\s]*)@")
# A version-looking tag: starts with a digit (7.4.1, 0.24.1, 3.11.14-slim-bookworm).
VERSION_TAG = re.compile(r"^\d+(\.\d+)*([-.][A-Za-z0-9.\-]+)?$")


def _load_compose() -> dict[str, Any]:
    with COMPOSE_FILE.open(encoding="utf-8") as f:
        data = yaml.safe_load(f)  # resolves the `<<: *app-env` merge keys as compose does
    assert isinstance(data, dict) and isinstance(data.get("services"), dict), (
        f"{COMPOSE_FILE} has no `services:` mapping"
    )
    return data


COMPOSE = _load_compose()
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]


def _environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's `environment:`, in either compose form (mapping or list of NAME=value)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = (item.split("=", 1) if "=" in item else (item, "") for item in env)
        return {name: value for name, value in pairs}
    return {str(name): "" if value is None else str(value) for name, value in env.items()}


def _split_image(image: str) -> tuple[str, str | None]:
    """(repository, tag or None); a registry port (host:5000/name) is not a tag."""
    name, _, digest = image.partition("@")
    last_slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > last_slash:
        return name[:colon], name[colon + 1 :]
    return name, None if not digest else f"@{digest}"


def _is_pinned(tag: str | None) -> bool:
    if tag is None:
        return False
    if tag.startswith("@sha256:"):
        return True
    return tag.lower() != "latest" and VERSION_TAG.match(tag) is not None


def setting_env_names() -> list[str]:
    """The environment variable names the code reads: Settings' field names, upper-cased."""
    return sorted(name.upper() for name in Settings.model_fields)


def test_the_settings_have_fields() -> None:
    # Guards the derivation itself: an empty list would make the completeness test vacuous.
    assert "DATABASE_URL" in setting_env_names()
    assert len(setting_env_names()) > 10


def test_the_app_services_exist() -> None:
    for name in (*APP_SERVICES, "smtp"):
        assert name in SERVICES, f"docker-compose.yml has no `{name}` service"


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_image_is_pinned(name: str) -> None:
    service = SERVICES[name]
    image = service.get("image")
    assert isinstance(image, str) and image, f"service {name!r} has no `image:`"
    repository, tag = _split_image(image)
    assert _is_pinned(tag), (
        f"service {name!r}: image {image!r} is not pinned to a version tag "
        f"(got tag {tag!r}; `latest` and missing tags are refused)"
    )
    if "build" in service:
        assert repository and tag is not None and not tag.startswith("@"), (
            f"service {name!r} is built: it needs an explicit `image: name:version`, got {image!r}"
        )


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_service_has_a_healthcheck(name: str) -> None:
    healthcheck = SERVICES[name].get("healthcheck")
    assert isinstance(healthcheck, dict), f"service {name!r} has no `healthcheck:`"
    assert not healthcheck.get("disable"), f"service {name!r} disables its healthcheck"
    test = healthcheck.get("test")
    assert test, f"service {name!r}: its healthcheck has no `test:`"
    if isinstance(test, list):
        assert test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, (
            f"service {name!r}: healthcheck test {test!r} must be [CMD, ...] or [CMD-SHELL, ...]"
        )


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_dependencies_wait_until_healthy(name: str) -> None:
    depends_on = SERVICES[name].get("depends_on") or {}
    assert isinstance(depends_on, dict), (
        f"service {name!r}: `depends_on` must be a mapping with `condition: service_healthy` "
        f"for each entry, got the short form {depends_on!r}"
    )
    for dependency, spec in depends_on.items():
        assert dependency in SERVICES, f"service {name!r} depends on unknown service {dependency!r}"
        condition = spec.get("condition") if isinstance(spec, dict) else None
        assert condition == "service_healthy", (
            f"service {name!r}: depends_on {dependency!r} has condition {condition!r}, "
            f"not `service_healthy`"
        )


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_services_get_every_setting(name: str) -> None:
    env = _environment(SERVICES[name])
    missing = [var for var in setting_env_names() if var not in env]
    assert not missing, (
        f"service {name!r} lacks settings the code reads (core.settings.Settings) "
        f"under `environment:`: {', '.join(missing)}"
    )


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_services_run_in_production(name: str) -> None:
    env = _environment(SERVICES[name])
    assert env.get("ENVIRONMENT") == "production", (
        f"service {name!r}: ENVIRONMENT is {env.get('ENVIRONMENT')!r}, not 'production'"
    )


def _clear_secrets(service: dict[str, Any]) -> list[str]:
    problems = []
    for var, value in _environment(service).items():
        if any(part in var.upper() for part in SECRET_NAME_PARTS):
            if not INTERPOLATION.match(value.strip()):
                problems.append(f"{var} is not a ${{...}} interpolation")
        for match in URL_CREDENTIALS.finditer(value):
            if not INTERPOLATION.match(match.group("password")):
                problems.append(f"{var} has a URL password that is not a ${{...}} interpolation")
    return problems


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_no_secret_in_clear(name: str) -> None:
    problems = _clear_secrets(SERVICES[name])
    assert not problems, f"service {name!r}: " + "; ".join(problems)


def test_the_secret_check_catches_clear_values() -> None:
    clear = {
        "environment": {
            "POSTGRES_PASSWORD": "hunter2",
            "TYPESENSE_API_KEY": "xyz",
            "DATABASE_URL": "postgresql://postgres:hunter2@postgres:5432/db",
        }
    }
    assert len(_clear_secrets(clear)) == 3
    safe = {
        "environment": [
            "POSTGRES_PASSWORD=${POSTGRES_PASSWORD:?set it}",
            "DATABASE_URL=postgresql://postgres:${POSTGRES_PASSWORD:?set it}@postgres:5432/db",
            "REDIS_URL=redis://redis:6379/0",
        ]
    }
    assert _clear_secrets(safe) == []


def _dockerfile_base_images(path: Path) -> list[str]:
    stages: set[str] = set()
    images = []
    for line in path.read_text(encoding="utf-8").splitlines():
        words = line.split()
        if not words or words[0].upper() != "FROM":
            continue
        args = [w for w in words[1:] if not w.startswith("--")]
        image = args[0]
        if image.lower() not in stages:  # `FROM builder` reuses an earlier stage
            images.append(image)
        if len(args) >= 3 and args[1].upper() == "AS":
            stages.add(args[2].lower())
    return images


def test_dockerfile_base_image_is_pinned() -> None:
    images = _dockerfile_base_images(DOCKERFILE)
    assert images, f"{DOCKERFILE} has no FROM line"
    for image in images:
        _, tag = _split_image(image)
        assert _is_pinned(tag), f"Dockerfile: base image {image!r} is not pinned to a version tag"
        if tag is not None and not tag.startswith("@"):
            assert re.match(r"^\d+\.\d+\.\d+", tag), (
                f"Dockerfile: base image {image!r} is not pinned to a patch release (x.y.z)"
            )


def test_dockerfile_runs_as_non_root() -> None:
    users = [
        line.split()[1]
        for line in DOCKERFILE.read_text(encoding="utf-8").splitlines()
        if line.split() and line.split()[0].upper() == "USER" and len(line.split()) > 1
    ]
    assert users, "Dockerfile never sets USER: the image would run as root"
    assert users[-1].split(":")[0] not in ("root", "0"), (
        f"Dockerfile: the final USER is {users[-1]!r}, i.e. root"
    )


# --- the `kafka3` profile: the local stack's 3-broker profile (STACK_KAFKA_BROKERS=3) --------

KAFKA3_CONTROLLERS = [f"kafka-controller-{i}" for i in (1, 2, 3)]
KAFKA3_BROKERS = [f"kafka-broker-{i}" for i in (1, 2, 3)]


def test_the_kafka3_profile_is_three_controllers_and_three_brokers() -> None:
    profiled = sorted(n for n, s in SERVICES.items() if "kafka3" in (s.get("profiles") or []))
    assert profiled == sorted(KAFKA3_CONTROLLERS + KAFKA3_BROKERS)
    kafka_image = SERVICES["kafka"]["image"]
    assert kafka_image == f"apache/kafka:{Settings().kafka_version}"
    envs = {n: _environment(SERVICES[n]) for n in profiled}
    ids = {n: envs[n]["KAFKA_NODE_ID"] for n in profiled}
    assert [ids[n] for n in KAFKA3_CONTROLLERS + KAFKA3_BROKERS] == ["1", "2", "3", "4", "5", "6"]
    voters = "1@kafka-controller-1:9093,2@kafka-controller-2:9093,3@kafka-controller-3:9093"
    volumes = set()
    for name in profiled:
        service, env = SERVICES[name], envs[name]
        assert service["image"] == kafka_image, f"{name}: not the `kafka` service's image"
        assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == voters, name
        assert env["CLUSTER_ID"] == envs["kafka-controller-1"]["CLUSTER_ID"], name
        assert env["CLUSTER_ID"] != _environment(SERVICES["kafka"])["CLUSTER_ID"]
        # every topic: 3 copies, 2 in sync, never an out-of-sync leader (the controllers
        # create the topics, so their defaults count as much as the brokers')
        assert env["KAFKA_DEFAULT_REPLICATION_FACTOR"] == "3", name
        assert env["KAFKA_MIN_INSYNC_REPLICAS"] == "2", name
        assert env["KAFKA_UNCLEAN_LEADER_ELECTION_ENABLE"] == "false", name
        (volume,) = service["volumes"]
        volumes.add(volume.split(":")[0])
        assert volume.split(":")[0] in COMPOSE["volumes"], name
    assert len(volumes) == 6, "each node keeps its data in a volume of its own"
    for name in KAFKA3_CONTROLLERS:
        assert envs[name]["KAFKA_PROCESS_ROLES"] == "controller"
        assert "--bootstrap-controller" in SERVICES[name]["healthcheck"]["test"]
    for i, name in enumerate(KAFKA3_BROKERS, start=1):
        env = envs[name]
        assert env["KAFKA_PROCESS_ROLES"] == "broker"
        assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] == "INTERNAL"
        assert f"CLIENT://kafka-broker-{i}:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
        assert f"INTERNAL://kafka-broker-{i}:9094" in env["KAFKA_ADVERTISED_LISTENERS"]
        assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "3"
        assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "3"
        assert env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == "2"
        assert sorted(SERVICES[name]["depends_on"]) == KAFKA3_CONTROLLERS  # each healthy first
        assert "--bootstrap-server" in SERVICES[name]["healthcheck"]["test"]


def test_no_service_outside_a_profile_needs_one_inside() -> None:
    """`docker compose up` (no profile) must not need a service that only a profile starts."""
    for name, service in SERVICES.items():
        if service.get("profiles"):
            continue
        for dependency in service.get("depends_on") or {}:
            assert not SERVICES[dependency].get("profiles"), (
                f"service {name!r} (every profile) depends on {dependency!r} (profiles "
                f"{SERVICES[dependency]['profiles']})"
            )
