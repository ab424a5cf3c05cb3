"""The profile's buckets: each py-spy sample goes to the innermost frame's known part."""

from __future__ import annotations

from mohallamart.profile_workers import OTHER, bucket_of

SITE = "/v/lib/python3.11/site-packages"


def test_innermost_known_frame_decides() -> None:
    psycopg = (
        f"run (/r/streams/agents/_batches.py:10);write_batch (/r/connectors/postgres.py:5);"
        f"execute ({SITE}/psycopg/cursor.py:3);dumps (/usr/lib/python3.11/json/__init__.py:1)"
    )
    assert bucket_of(psycopg) == "PostgreSQL client (psycopg)"
    apply = "run (/r/streams/agents/_batches.py:10);_order (/r/connectors/postgres.py:5)"
    assert bucket_of(apply) == "apply (connectors)"
    decode = (
        "process (/r/streams/reliability.py:1);decode (/r/schemas/codec.py:2);"
        f"read ({SITE}/fastavro/_read.py:3)"
    )
    assert bucket_of(decode) == "decode (fastavro, schemas)"
    loop = (
        f"_run_once (/usr/lib/python3.11/asyncio/base_events.py:1);take ({SITE}/faust/streams.py:9)"
    )
    assert bucket_of(loop) == "faust consumer loop (faust, mode)"
    fetch = f"run ({SITE}/mode/threads.py:1);_fetch ({SITE}/aiokafka/consumer/fetcher.py:2)"
    assert bucket_of(fetch) == "Kafka client (aiokafka)"


def test_commits_have_their_own_bucket() -> None:
    commit = (
        f"run ({SITE}/mode/services.py:1);commit ({SITE}/faust/transport/consumer.py:2);"
        f"send ({SITE}/aiokafka/conn.py:3)"
    )
    assert bucket_of(commit) == "offset commit"


def test_unknown_stacks_are_other() -> None:
    assert bucket_of("collect (<gc>:0)") == OTHER
