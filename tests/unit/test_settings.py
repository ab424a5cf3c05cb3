"""The settings object: typed, frozen, secrets hidden, placeholders refused outside development."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from core.settings import PLACEHOLDER_SECRET, Settings


def _settings(**env: str) -> Settings:
    return Settings(_env_file=None, **env)  # type: ignore[arg-type]


def test_unset_urls_point_at_the_local_stack() -> None:
    s = _settings(stack_kafka_port="29092", stack_postgres_port="25432")
    assert s.kafka_bootstrap == "127.0.0.1:29092"
    assert s.postgres_dsn == "postgresql://postgres@127.0.0.1:25432/mohallamart"
    assert s.registry_url.endswith("/apis/ccompat/v7")


def test_configured_urls_win() -> None:
    s = _settings(
        kafka_bootstrap_servers="broker:9092",
        database_url="postgresql://app:s3cret@db:5432/app",
        smtp_url="smtp://relay.example:2525",
    )
    assert s.kafka_bootstrap == "broker:9092"
    assert s.postgres_dsn == "postgresql://app:s3cret@db:5432/app"
    assert s.smtp_address == ("relay.example", 2525)


def test_secrets_never_show_in_repr() -> None:
    s = _settings(database_url="postgresql://app:s3cret@db/app", typesense_api_key="k3y-value")
    assert "s3cret" not in repr(s) and "k3y-value" not in repr(s)
    assert "s3cret" not in str(s.model_dump())


def test_frozen() -> None:
    s = _settings()
    with pytest.raises(ValidationError):
        s.api_port = 1  # type: ignore[misc]


def test_placeholder_secret_refused_in_production() -> None:
    with pytest.raises(ValidationError, match="TYPESENSE_API_KEY"):
        _settings(environment="production")
    assert _settings(environment="production", typesense_api_key="real-key").environment == (
        "production"
    )
    assert _settings(environment="development").typesense_api_key.get_secret_value() == (
        PLACEHOLDER_SECRET
    )


def test_bad_port_names_the_field() -> None:
    with pytest.raises(ValidationError) as exc:
        _settings(stack_redis_port="70000")
    assert "stack_redis_port" in str(exc.value)


def test_provider_endpoints_default_to_the_stack_stand_in_and_can_be_switched_off() -> None:
    from core.settings import Settings

    s = Settings(stack_providers_port=18999)
    assert s.provider_endpoint("sms") == "http://127.0.0.1:18999/sms"
    assert s.provider_endpoint("push") == "http://127.0.0.1:18999/push"
    s = Settings(sms_provider_url="https://sms.example/v1", push_provider_url="off")
    assert s.provider_endpoint("sms") == "https://sms.example/v1"
    assert s.provider_endpoint("push") is None
    assert Settings(push_provider_url="").provider_endpoint("push") is None


def test_replication_of_created_topics() -> None:
    s = _settings()
    assert (s.kafka_replication_factor, s.kafka_min_insync_replicas) == (1, 1)
    s = _settings(kafka_replication_factor="3", kafka_min_insync_replicas="2")
    assert (s.kafka_replication_factor, s.kafka_min_insync_replicas) == (3, 2)
    for field in ("kafka_replication_factor", "kafka_min_insync_replicas"):
        with pytest.raises(ValidationError, match=field):
            _settings(**{field: "0"})
    with pytest.raises(ValidationError, match="KAFKA_MIN_INSYNC_REPLICAS"):
        _settings(kafka_replication_factor="1", kafka_min_insync_replicas="2")
