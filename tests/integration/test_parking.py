"""Retries that hold back only their key.

A record the projections cannot apply (here: a real PostgreSQL trigger refusing the rows a test
names, as a broken row or constraint would) is parked for its retries while other keys and the
rest of its partition flow; its partition never commits past it, so a `kill -9` while it is
parked brings it back (attempt 1), and later records of its key wait behind it, in order, until
it is applied or dead-lettered.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient

from connectors.redis_cache import cache_key
from schemas.catalog import TOPICS
from schemas.partitioner import partition_for
from tests.integration._pipeline import Pipeline, example, uid
from tests.integration._support import poll

STAGE = "projections/persist_users"
DELAYS = [4, 4, 4]  # long enough to watch a parked record across commit intervals
WORKER = "projections-parking"

_TRIGGER = """
CREATE TABLE IF NOT EXISTS tests_poison (name text PRIMARY KEY);
CREATE OR REPLACE FUNCTION tests_poison_users() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM tests_poison WHERE name = NEW.name) THEN
        RAISE EXCEPTION 'tests: user name % is poisoned', NEW.name;
    END IF;
    RETURN NEW;
END $$;
DROP TRIGGER IF EXISTS tests_poison_users ON users;
CREATE TRIGGER tests_poison_users BEFORE INSERT OR UPDATE ON users
    FOR EACH ROW EXECUTE FUNCTION tests_poison_users();
"""


@pytest.fixture
def parking(pipeline: Pipeline) -> Iterator[Pipeline]:
    """The projections role run by a worker whose users stage retries after 4, 4 and 4 s, and
    a trigger that refuses the user names in `tests_poison`; both undone afterwards."""
    p = pipeline
    p.execute(_TRIGGER)
    p.workers.stop("projections")
    env = {"WORKER_RETRY_DELAYS_BY_STAGE": json.dumps({STAGE: DELAYS})}
    p.workers.start(WORKER, "projections", env=env)
    try:
        yield p
    finally:
        p.workers.stop(WORKER)
        p.execute("DROP TRIGGER IF EXISTS tests_poison_users ON users")
        p.execute("DELETE FROM tests_poison")
        p.workers.restart("projections")


def _metric(p: Pipeline, name: str) -> float:
    text = p.workers.metrics(WORKER)
    m = re.search(rf'^{name}{{[^}}]*stage="{STAGE}"[^}}]*}} ([0-9.e+-]+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def _committed(p: Pipeline, topic: str, partition: int) -> int:
    admin = AdminClient({"bootstrap.servers": p.settings.kafka_bootstrap})
    group = f"{p.settings.worker_app_prefix}-projections"
    req = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, partition)])
    res = list(admin.list_consumer_group_offsets([req]).values())[0].result(timeout=10)
    return int(res.topic_partitions[0].offset)


def _same_partition(key: str, n: int, topic_partitions: int) -> list[str]:
    want = partition_for(key, topic_partitions)
    out: list[str] = []
    while len(out) < n:
        cand = uid("usr_park")
        if partition_for(cand, topic_partitions) == want:
            out.append(cand)
    return out


def _register(p: Pipeline, user_id: str, name: str) -> dict[str, Any]:
    data = example("user.registered", user_id=user_id, name=name, email=f"{user_id}@example.in")
    data["preferences"] = {**data["preferences"], "email_opt_in": False, "sms_opt_in": False}
    data["preferences"]["push_opt_in"] = False
    return Pipeline.event("user.registered", data)


def test_a_parked_record_holds_only_its_key_survives_commits_and_kill_9(parking: Pipeline) -> None:
    p = parking
    topic = TOPICS["user"]
    poisoned = f"POISON-{uuid.uuid4().hex[:8]}"
    p.execute("INSERT INTO tests_poison (name) VALUES (%s)", poisoned)
    bad_user = uid("usr_park_bad")
    bad = _register(p, bad_user, poisoned)
    r = p.http.post("/v1/events", json=bad)
    assert r.status_code == 202, r.text
    partition, offset = r.json()["partition"], r.json()["offset"]
    poll(lambda: _metric(p, "mohallamart_worker_parked_records") >= 1, timeout=60, what="parked")
    retries_at_park = _metric(p, "mohallamart_worker_retries_total")

    # 200 records of other keys on the same partition flow while it is parked
    others = _same_partition(bad_user, 200, topic.partitions)
    p.post_batch([_register(p, u, f"Other {u}") for u in others])
    p.wait_row(
        "SELECT count(*) FROM users WHERE user_id = ANY(%s)",
        others,
        until=lambda row: row[0] == len(others),
        timeout=30,
        what="the other keys' rows",
    )
    assert _metric(p, "mohallamart_worker_retries_total") == retries_at_park, (
        "the other keys waited for the parked record's second attempt"
    )
    # the read side too: the cache role fills the other keys' views while the projections still
    # hold the poisoned record (the cache parks its copy of it, for its key only)
    cache = redis.Redis.from_url(p.settings.redis_dsn)
    poll(
        lambda: all(cache.exists(cache_key("user", u)) for u in others) or None,
        timeout=6,
        interval=0.1,
        what="the other keys' views in the cache while the projections hold the poisoned record",
    )
    assert _metric(p, "mohallamart_worker_retries_total") == retries_at_park
    # the partition never commits past the parked record, over more than 3 commit intervals
    deadline = time.monotonic() + 3.5
    while time.monotonic() < deadline:
        assert _committed(p, topic.name, partition) <= offset
        time.sleep(0.25)
    assert _committed(p, topic.name, partition) == offset  # everything before it committed
    assert p.row("SELECT 1 FROM users WHERE user_id = %s", bad_user) is None

    # kill -9 while it is parked; the cause is fixed; after the restart it is applied
    p.workers.kill9(WORKER)
    p.execute("DELETE FROM tests_poison WHERE name = %s", poisoned)
    p.workers.restart(WORKER)
    p.wait_row(
        "SELECT name FROM users WHERE user_id = %s",
        bad_user,
        timeout=60,
        what="the parked record applied after the restart",
    )
    assert p.dead_letters(topic.name, bad["id"]) == []


def test_the_poison_keys_next_record_is_applied_after_its_dead_letter(parking: Pipeline) -> None:
    p = parking
    topic = TOPICS["user"]
    user = uid("usr_park_q")
    p.post_event(_register(p, user, "Before"))
    p.wait_row("SELECT 1 FROM users WHERE user_id = %s", user, what="the user registered")
    poisoned = f"POISON-{uuid.uuid4().hex[:8]}"
    p.execute("INSERT INTO tests_poison (name) VALUES (%s)", poisoned)

    def update(name: str) -> dict[str, Any]:
        data = example("user.updated", user_id=user, name=name, email=f"{user}@example.in")
        return p.post("user.updated", data)

    parked_before = _metric(p, "mohallamart_worker_parked_records")
    bad = update(poisoned)
    # parked before the next update is posted: in one batch the projections would fold both
    # updates into the final row and the poisoned name would never reach the trigger
    poll(
        lambda: _metric(p, "mohallamart_worker_parked_records") > parked_before,
        timeout=30,
        what="the poisoned update parked",
    )
    after = update("After")
    # behind the poisoned update: not applied while it is retried
    time_limit = sum(DELAYS) + 30
    row = p.wait_row(
        "SELECT name FROM users WHERE user_id = %s",
        user,
        until=lambda r: r[0] == "After",
        timeout=time_limit,
        what="the key's next update applied",
    )
    assert row[0] == "After"
    letters = p.dead_letters(topic.name, bad["id"])  # dead-lettered before the next was applied
    assert len(letters) == 1, letters
    assert letters[0]["x-attempts"] == str(1 + len(DELAYS))
    assert letters[0]["x-stage"] == STAGE
    assert p.dead_letters(topic.name, after["id"]) == []
