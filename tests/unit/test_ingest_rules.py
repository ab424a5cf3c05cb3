"""The ingest rules that need no stack: the media type, the clock skew of `occurred_at`, and the
answer to each kind of failed delivery (tests/integration/test_ingest_rules.py: the same on the
real stack)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from confluent_kafka import KafkaError

from api.ingest import Ingestor
from api.problems import Problem
from api.routes.events import require_json
from connectors.claims import ClaimOutcome
from connectors.producer import Delivery, Failure, Record, failure_kind
from schemas.catalog import EVENT_TYPES

# --- media type -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON",
        "application/json;",
    ],
)
def test_json_media_types_pass(content_type: str) -> None:
    require_json(content_type)


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "",
        "text/plain",
        "text/plain; charset=utf-8",
        "application/problem+json",
        "application/x-www-form-urlencoded",
        "application/jsonx",
        "multipart/form-data; boundary=x",
    ],
)
def test_other_media_types_are_415_naming_the_header(content_type: str | None) -> None:
    with pytest.raises(Problem) as refused:
        require_json(content_type)
    assert refused.value.status == 415
    assert refused.value.slug == "unsupported-media-type"
    assert [(e.field, e.rule) for e in refused.value.errors] == [
        ("Content-Type", "must be application/json")
    ]


# --- fakes: no network ----------------------------------------------------------------------------


class _Registry:
    def cached_id(self, event: Any) -> int:
        return 1


class _Claims:
    """Every id is ours to produce; records what is marked done and what is released."""

    def __init__(self, *, release_fails: bool = False) -> None:
        self.done_ids: list[str] = []
        self.released: list[str] = []
        self.release_fails = release_fails

    async def claim(
        self, ids: Sequence[str], hashes: Sequence[bytes], types: Sequence[str]
    ) -> list[ClaimOutcome]:
        return [ClaimOutcome(i, True, True, False, None, None, None) for i in ids]

    async def done(self, delivered: Sequence[tuple[str, str, int, int]]) -> None:
        self.done_ids += [d[0] for d in delivered]

    async def release(self, ids: Sequence[str]) -> None:
        if self.release_fails:
            raise OSError("the database is down")
        self.released += ids


class _Producer:
    """Answers each record with the next of `outcomes` (an error code, or None: delivered)."""

    def __init__(self, outcomes: list[int | None] | Exception) -> None:
        self.outcomes = outcomes

    async def send(self, records: Sequence[Record]) -> list[Delivery | KafkaError]:
        if isinstance(self.outcomes, Exception):
            raise self.outcomes
        return [
            Delivery(r.topic, 0, n) if code is None else KafkaError(code)
            for n, (r, code) in enumerate(zip(records, self.outcomes, strict=True))
        ]


def _ingestor(
    producer: _Producer | None = None, claims: _Claims | None = None, skew_s: float = 60.0
) -> Ingestor:
    ingestor = Ingestor(
        _Registry(),  # type: ignore[arg-type]  # only cached_id is called
        producer or _Producer([]),  # type: ignore[arg-type]  # only send is called
        claims or _Claims(),  # type: ignore[arg-type]  # claim, done, release
        max_event_bytes=900_000,
        request_timeout_s=2,
        max_clock_skew_s=skew_s,
    )
    ingestor.topics_ready.set()
    return ingestor


def _order(at: datetime | str | None = None) -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": "order.created",
        "data": copy.deepcopy(EVENT_TYPES["order.created"].example),
    }
    if at is not None:
        event["occurred_at"] = at if isinstance(at, str) else at.isoformat()
    return event


# --- occurred_at: not too far in the future -------------------------------------------------------


def test_occurred_at_within_the_skew_or_in_the_past_is_accepted() -> None:
    now = datetime.now(UTC)
    ingestor = _ingestor()
    for at in (now + timedelta(seconds=30), now, "2025-01-01T00:00:00Z", "2025-01-01T05:30+05:30"):
        (p,) = ingestor.validate([_order(at)], batch=False, source="t", trace_id="t")
        if isinstance(at, str):
            assert p.ts_ms == int(datetime.fromisoformat(at).timestamp() * 1000)


@pytest.mark.parametrize("ahead", [timedelta(minutes=2), timedelta(hours=2), timedelta(days=400)])
def test_occurred_at_beyond_the_skew_is_422_naming_the_rule_and_the_clock(ahead: timedelta) -> None:
    at = datetime.now(UTC) + ahead
    with pytest.raises(Problem) as refused:
        _ingestor().validate([_order(at)], batch=False, source="t", trace_id="t")
    assert refused.value.status == 422
    (error,) = refused.value.errors
    assert error.field == "occurred_at"
    assert error.rule.startswith("must not be more than 60 s in the future (the API's clock: ")
    clock = datetime.fromisoformat(error.rule.rsplit(": ", 1)[1].rstrip(")"))
    assert abs(clock - datetime.now(UTC)) < timedelta(seconds=5)


def test_the_skew_counts_the_offset_and_follows_the_setting() -> None:
    # 10 s ahead in UTC, written in IST: ahead by 10 s, not by 5 h 30
    ist = (datetime.now(UTC) + timedelta(seconds=10)).astimezone(
        datetime.fromisoformat("2026-01-01T00:00+05:30").tzinfo
    )
    _ingestor().validate([_order(ist)], batch=False, source="t", trace_id="t")
    with pytest.raises(Problem) as refused:
        _ingestor(skew_s=2.5).validate([_order(ist)], batch=False, source="t", trace_id="t")
    assert refused.value.errors[0].rule.startswith("must not be more than 2.5 s in the future")


def test_in_a_batch_the_event_is_named() -> None:
    events = [_order() for _ in range(5)]
    events[3]["occurred_at"] = (datetime.now(UTC) + timedelta(minutes=2)).isoformat()
    with pytest.raises(Problem) as refused:
        _ingestor().validate(events, batch=True, source="t", trace_id="t")
    assert refused.value.status == 422
    assert [e.field for e in refused.value.errors] == ["events[3].occurred_at"]
    assert "nothing was written" in refused.value.detail


# --- failed deliveries: transient, refused, unexpected --------------------------------------------


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (KafkaError._MSG_TIMED_OUT, Failure.TRANSIENT),
        (KafkaError._TRANSPORT, Failure.TRANSIENT),
        (KafkaError._ALL_BROKERS_DOWN, Failure.TRANSIENT),
        (KafkaError._QUEUE_FULL, Failure.TRANSIENT),
        (KafkaError.REQUEST_TIMED_OUT, Failure.TRANSIENT),
        (KafkaError.NOT_ENOUGH_REPLICAS, Failure.TRANSIENT),
        (KafkaError.LEADER_NOT_AVAILABLE, Failure.TRANSIENT),
        (KafkaError.INVALID_TIMESTAMP, Failure.REFUSED),
        (KafkaError.INVALID_RECORD, Failure.REFUSED),
        (KafkaError.MSG_SIZE_TOO_LARGE, Failure.TOO_LARGE),
        (KafkaError.TOPIC_AUTHORIZATION_FAILED, Failure.UNEXPECTED),
        (KafkaError.UNKNOWN_TOPIC_OR_PART, Failure.UNEXPECTED),
        (KafkaError._UNKNOWN_TOPIC, Failure.UNEXPECTED),
        (KafkaError._FATAL, Failure.UNEXPECTED),
        (KafkaError._FAIL, Failure.UNEXPECTED),
    ],
)
def test_failure_kinds(code: int, kind: Failure) -> None:
    assert failure_kind(KafkaError(code)) is kind


def test_a_fatal_error_is_never_transient() -> None:
    assert failure_kind(KafkaError(KafkaError._MSG_TIMED_OUT, fatal=True)) is Failure.UNEXPECTED
    assert failure_kind(KafkaError(KafkaError._FAIL, retriable=True)) is Failure.TRANSIENT


@pytest.mark.parametrize(
    ("code", "status", "slug", "field"),
    [
        (KafkaError.INVALID_TIMESTAMP, 422, "refused-by-kafka", "occurred_at"),
        (KafkaError.INVALID_RECORD, 422, "refused-by-kafka", "(event)"),
        (KafkaError.MSG_SIZE_TOO_LARGE, 413, "event-too-large", "(event)"),
        (KafkaError.TOPIC_AUTHORIZATION_FAILED, 500, "kafka-error", "(event)"),
        (KafkaError.UNKNOWN_TOPIC_OR_PART, 500, "kafka-error", "(event)"),
        (KafkaError._MSG_TIMED_OUT, 503, "kafka-unavailable", None),
        (KafkaError.NOT_ENOUGH_REPLICAS, 503, "kafka-unavailable", None),
    ],
)
async def test_a_failed_delivery_is_answered_by_its_kind_and_releases_the_claim(
    code: int, status: int, slug: str, field: str | None
) -> None:
    claims = _Claims()
    ingestor = _ingestor(_Producer([code]), claims)
    prepared = ingestor.validate([_order()], batch=False, source="t", trace_id="t")
    with pytest.raises(Problem) as failed:
        await ingestor.ingest(prepared, batch=False)
    assert (failed.value.status, failed.value.slug) == (status, slug)
    assert [e.field for e in failed.value.errors] == ([field] if field else [])
    assert ("Retry-After" in failed.value.headers) is (status == 503)
    assert claims.released == [prepared[0].event_id]
    assert claims.done_ids == []


async def test_a_batch_names_the_refused_event_and_says_what_was_written() -> None:
    claims = _Claims()
    refused = KafkaError.INVALID_TIMESTAMP
    ingestor = _ingestor(_Producer([None, refused, None, KafkaError._MSG_TIMED_OUT]), claims)
    prepared = ingestor.validate([_order() for _ in range(4)], batch=True, source="t", trace_id="t")
    with pytest.raises(Problem) as failed:
        await ingestor.ingest(prepared, batch=True)
    # the refusal is answered (the client can fix it); the timed-out event is released too
    assert failed.value.status == 422
    assert [e.field for e in failed.value.errors] == ["events[1].occurred_at"]
    assert "2 of 4 event(s) were written" in failed.value.detail
    assert claims.done_ids == [prepared[0].event_id, prepared[2].event_id]
    assert claims.released == [prepared[1].event_id, prepared[3].event_id]


async def test_an_unexpected_exception_releases_the_claims() -> None:
    claims = _Claims()
    ingestor = _ingestor(_Producer(RuntimeError("boom")), claims)
    prepared = ingestor.validate([_order(), _order()], batch=True, source="t", trace_id="t")
    with pytest.raises(RuntimeError):
        await ingestor.ingest(prepared, batch=True)
    assert claims.released == [p.event_id for p in prepared]


async def test_a_failed_release_does_not_hide_the_answer() -> None:
    ingestor = _ingestor(_Producer([KafkaError.INVALID_TIMESTAMP]), _Claims(release_fails=True))
    prepared = ingestor.validate([_order()], batch=False, source="t", trace_id="t")
    with pytest.raises(Problem) as failed:
        await ingestor.ingest(prepared, batch=False)
    assert failed.value.status == 422
