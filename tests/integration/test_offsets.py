"""`mohallamart offsets reset`: a role's group moved to the beginning or to a time, only with its
workers stopped."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions
from confluent_kafka.admin import AdminClient

from tests.integration._cli import mohallamart
from tests.integration._pipeline import Pipeline, example, uid
from tests.integration._support import poll

pytestmark = pytest.mark.integration


def _committed(p: Pipeline, group: str) -> dict[tuple[str, int], int]:
    admin = AdminClient({"bootstrap.servers": p.settings.kafka_bootstrap})
    fut = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])
    res = list(fut.values())[0].result(timeout=10)
    return {(tp.topic, tp.partition): tp.offset for tp in res.topic_partitions if tp.offset >= 0}


def _watermarks(p: Pipeline, tps: list[tuple[str, int]]) -> dict[tuple[str, int], tuple[int, int]]:
    from confluent_kafka import TopicPartition

    c = Consumer({"bootstrap.servers": p.settings.kafka_bootstrap, "group.id": uid("probe")})
    try:
        return {tp: c.get_watermark_offsets(TopicPartition(*tp), timeout=10) for tp in tps}
    finally:
        c.close()


def test_a_stopped_roles_group_moves_to_the_beginning_or_to_a_time(pipeline: Pipeline) -> None:
    p = pipeline
    prefix = uid("tests-reset").replace("_", "-")
    env = {"WORKER_APP_PREFIX": prefix, "WORKER_OFFSET_RESET": "latest"}
    group = f"{prefix}-cache"
    p.workers.start("reset-cache", "cache", env=env)
    try:
        # the worker starts at the end of the topics once it has joined: post until it has
        # committed past one of the events posted
        posted: list[tuple[tuple[str, int], int]] = []

        def committed_past_one() -> bool:
            r = p.http.post(
                "/v1/events",
                json=p.event("user.registered", example("user.registered", user_id=uid("usr"))),
            )
            assert r.status_code == 202, r.text
            posted.append(((r.json()["topic"], r.json()["partition"]), r.json()["offset"]))
            got = _committed(p, group)
            return any(got.get(tp, -1) > off for tp, off in posted)

        poll(committed_past_one, timeout=90, interval=1, what="the scratch worker to commit")
        # while a worker of the role runs: refused, nothing moved
        before = _committed(p, group)
        out = mohallamart(
            "offsets", "reset", "--role", "cache", "--to-earliest", "--execute", env=env
        )
        assert out.returncode == 1, out.stdout
        assert "active member" in out.stderr and "stop the cache workers" in out.stderr
        # (the running worker may commit meanwhile, forward only)
        now = _committed(p, group)
        assert all(now.get(tp, -1) >= off for tp, off in before.items())
    finally:
        p.workers.stop("reset-cache")
    before = _committed(p, group)

    # a dry run shows the plan and moves nothing
    out = mohallamart("offsets", "reset", "--role", "cache", "--to-earliest", env=env)
    assert out.returncode == 0, out.stderr
    assert "dry run" in out.stdout
    assert _committed(p, group) == before

    out = mohallamart("offsets", "reset", "--role", "cache", "--to-earliest", "--execute", env=env)
    assert out.returncode == 0, out.stderr
    after = _committed(p, group)
    marks = _watermarks(p, list(after))
    assert set(after) == set(before)
    assert all(after[tp] == marks[tp][0] for tp in after), (after, marks)

    # to a time after every record: the end of each partition
    out = mohallamart(
        "offsets",
        "reset",
        "--role",
        "cache",
        "--to-datetime",
        datetime.now(UTC).isoformat(),
        "--execute",
        env=env,
    )
    assert out.returncode == 0, out.stderr
    after = _committed(p, group)
    marks = _watermarks(p, list(after))
    assert all(after[tp] == marks[tp][1] for tp in after), (after, marks)
    # a time without a zone is refused
    out = mohallamart(
        "offsets", "reset", "--role", "cache", "--to-datetime", "2026-01-01T00:00:00", env=env
    )
    assert out.returncode == 2 and "zone" in out.stdout
