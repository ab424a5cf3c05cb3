"""Where consumer groups stand: their committed offsets and the topics' end offsets.

Asked with aiokafka on the caller's own loop: librdkafka's admin client (confluent-kafka), asked
from a thread while the broker went away, aborted a whole worker
(`rd_kafka_enq_once_del_source_return: Assertion 'eonce->refcnt > 0' failed`, SIGABRT).
Failures are `DependencyDown`, and the clients are made again on the next call.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from aiokafka.structs import TopicPartition as AioTP

from connectors.base import DependencyDown
from core.settings import KafkaSecurity

__all__ = ["GroupOffsets"]

TP = tuple[str, int]


class GroupOffsets:
    """Committed offsets of consumer groups, and end offsets of topics."""

    def __init__(self, bootstrap: str, *, security: KafkaSecurity, timeout_s: float = 5.0) -> None:
        self.bootstrap = bootstrap
        self.security = security
        self.timeout_s = timeout_s
        self._admin: AIOKafkaAdminClient | None = None
        self._consumer: AIOKafkaConsumer | None = None

    async def _admin_client(self) -> AIOKafkaAdminClient:
        if self._admin is None:
            admin = AIOKafkaAdminClient(
                bootstrap_servers=self.bootstrap,
                request_timeout_ms=int(self.timeout_s * 1000),
                **self.security.aiokafka(),
            )
            try:
                await admin.start()
            except BaseException:
                with contextlib.suppress(Exception):
                    await admin.close()
                raise
            self._admin = admin
        return self._admin

    async def _consumer_client(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap,
                group_id=None,
                enable_auto_commit=False,
                request_timeout_ms=int(self.timeout_s * 1000),
                **self.security.aiokafka(),
            )
            try:
                await consumer.start()
            except BaseException:
                with contextlib.suppress(Exception):
                    await consumer.stop()
                raise
            self._consumer = consumer
        return self._consumer

    async def _failed(self, exc: BaseException) -> DependencyDown:
        await self.close()
        return DependencyDown(f"Kafka: {type(exc).__name__}: {exc}".strip())

    async def committed(self, group: str, tps: Iterable[TP]) -> dict[TP, int]:
        """(topic, partition) -> the group's committed offset (-1: none yet)."""
        wanted = sorted(set(tps))
        try:
            async with asyncio.timeout(self.timeout_s):
                admin = await self._admin_client()
                found = await admin.list_consumer_group_offsets(
                    group, partitions=[AioTP(t, p) for t, p in wanted]
                )
        except (KafkaError, OSError, TimeoutError) as exc:
            raise await self._failed(exc) from exc
        out = dict.fromkeys(wanted, -1)
        out.update({(tp.topic, tp.partition): meta.offset for tp, meta in found.items()})
        return out

    async def groups(self, prefix: str) -> list[str]:
        """The consumer groups whose id starts with `prefix`, sorted."""
        try:
            async with asyncio.timeout(self.timeout_s):
                admin = await self._admin_client()
                found = await admin.list_consumer_groups()
        except (KafkaError, OSError, TimeoutError) as exc:
            raise await self._failed(exc) from exc
        return sorted(g[0] for g in found if str(g[0]).startswith(prefix))

    async def all_committed(self, group: str) -> dict[TP, int]:
        """(topic, partition) -> the group's committed offset, for every partition it committed."""
        try:
            async with asyncio.timeout(self.timeout_s):
                admin = await self._admin_client()
                found = await admin.list_consumer_group_offsets(group)
        except (KafkaError, OSError, TimeoutError) as exc:
            raise await self._failed(exc) from exc
        return {(tp.topic, tp.partition): meta.offset for tp, meta in found.items()}

    async def ends(self, topics: Iterable[str]) -> dict[TP, int]:
        """(topic, partition) -> the next offset to be written, for every partition of `topics`.
        Raises DependencyDown when a topic's partitions cannot be listed (a topic missing from
        the answer would read as "nothing to catch up with")."""
        names = sorted(set(topics))
        try:
            async with asyncio.timeout(self.timeout_s * 2):
                admin = await self._admin_client()
                described = await admin.describe_topics(names)
                tps: list[AioTP] = []
                for t in described:
                    if t["error_code"] != 0 or not t["partitions"]:
                        raise DependencyDown(
                            f"Kafka: the partitions of {t['topic']} cannot be listed "
                            f"(error {t['error_code']})"
                        )
                    tps.extend(AioTP(t["topic"], p["partition"]) for p in t["partitions"])
                if {tp.topic for tp in tps} != set(names):
                    raise DependencyDown(f"Kafka: not every topic described: {names}")
                consumer = await self._consumer_client()
                found = await consumer.end_offsets(tps)
        except (KafkaError, OSError, TimeoutError) as exc:
            raise await self._failed(exc) from exc
        return {(tp.topic, tp.partition): int(offset) for tp, offset in found.items()}

    async def close(self) -> None:
        admin, self._admin = self._admin, None
        consumer, self._consumer = self._consumer, None
        if admin is not None:
            with contextlib.suppress(Exception):
                await admin.close()
        if consumer is not None:
            with contextlib.suppress(Exception):
                await consumer.stop()
