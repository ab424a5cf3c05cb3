"""The faust transport driver `mohallamart://`: faust's aiokafka driver with our consumer and
producer, registered under the `faust.transports` entry point (pyproject.toml), so the app is
configured with a URL instead of having its instances patched."""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any, ClassVar

import aiokafka.errors as kafka_errors
from aiokafka.consumer import fetcher as aiokafka_fetcher
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.transport.producer import ProducerBuffer
from faust.types import TP

from streams.transport.fence import EXIT_FENCED, FENCED, fence_of, may_send, stamp_generation
from streams.transport.stream import drain_messages

__all__ = ["EXIT_FENCED", "SCHEME", "Buffer", "Consumer", "Producer", "Transport", "broker_url"]

log = logging.getLogger(__name__)

#: the URL scheme of this driver (`broker="mohallamart://host:port"`)
SCHEME = "mohallamart"


def broker_url(bootstrap: str) -> str:
    """faust's `broker` setting for a Kafka bootstrap list ("host:port,host:port")."""
    return ";".join(f"{SCHEME}://{server.strip()}" for server in bootstrap.split(","))


class _NeverRead(dict[Any, Any]):
    """A read-offset map that never reports an offset: faust then drops nothing it fetched."""

    def __getitem__(self, key: Any) -> None:
        return None

    def get(self, key: Any, default: Any = None) -> None:
        return None


class _Assigned:
    """The partitions whose fetched records faust may hand on: active or paused (assigned)."""

    def __init__(self, consumer: Any) -> None:
        self.consumer = consumer

    def __contains__(self, tp: object) -> bool:
        c = self.consumer
        return tp in (c._active_partitions or ()) or tp in c._paused_partitions


class Consumer(faust_aiokafka.Consumer):
    """faust treats a jump in a partition's offsets as a gap already processed, the message that
    jumped included, and may commit past records no agent has seen (faust-streaming #606, #221:
    around rebalances). Our topics have no gaps (no transactions, no compaction): a jump is never
    acknowledged here; the records are delivered again instead of lost."""

    # faust drops a fetched record whose offset is below its "read offset" of the partition (the
    # last offset it handed on). A seek back (see streams.transport.continuity) then loses a race
    # with the fetch loop still handing on the records of an earlier fetch: it raises the read
    # offset again and the records sought are dropped, so the seek is repeated, again and again.
    # Here every record fetched is handed on; the agents admit each offset once, in order.
    @property
    def _read_offset(self) -> Any:
        return self.__dict__.setdefault("_mm_read_offset", _NeverRead())

    @_read_offset.setter
    def _read_offset(self, value: Any) -> None:
        pass

    async def _wait_next_records(self, timeout: float) -> Any:
        # faust hands on only the records of partitions still active once the fetch returns: a
        # partition paused meanwhile (a dependency down) loses the records of that fetch, a gap.
        # Hand on the records of every partition still assigned, paused or not (a revoked one
        # is neither active nor paused: its records are still dropped).
        records, _active = await super()._wait_next_records(timeout)
        if records:
            first = self.__dict__.setdefault("_mm_first_offset", {})
            for tp, fetched in records.items():
                if fetched and tp not in first:
                    first[tp] = fetched[0].offset
        return records, _Assigned(self)

    async def _commit_offsets(self, offsets: Any, start_new_transaction: bool = True) -> bool:
        # faust records offsets as committed even when the commit failed (a rebalance in
        # progress, an expelled member): the group's offset did not move, and the next owner
        # of the partition (this worker again, often) starts from the true one. Offset
        # continuity (`streams.transport.continuity`) read the recorded one and held the
        # records between them as copies for ever: a stock worker stopped committing after a
        # pause of the other one, until its watchdog ended it 45 s later.
        # The group's offsets are kept apart (`_mm_group`: set at each assignment's seek and by
        # each commit that succeeded), and a failed commit's are put back from there: a value
        # taken before the commit's awaits could be older than an assignment made meanwhile
        # (put back, it stopped the commits: the offset to commit is never past the lowest
        # record not acknowledged, see `_new_offset`).
        # An offset below the group's, dropped from the commit by `_commit`, is put back alike.
        did_commit: bool = await super()._commit_offsets(
            offsets, start_new_transaction=start_new_transaction
        )
        group = self.__dict__.setdefault("_mm_group", {})
        sent = self.__dict__.setdefault("_mm_sent", {})
        for tp in offsets:
            offset = sent.pop(tp, None)
            if did_commit and offset is not None:
                # an assignment's seek made meanwhile may have read a newer one: kept
                known = group.get(tp)
                group[tp] = self._committed_offset[tp] = (
                    offset if known is None else max(offset, known)
                )
            elif group.get(tp) is None:
                self._committed_offset.pop(tp, None)
            else:
                self._committed_offset[tp] = group[tp]
        return did_commit

    async def _commit(self, offsets: Any) -> bool:
        # The offsets to commit were read before faust's producer flush; an assignment made
        # during that flush sought its partitions to the group's offsets, read anew, and a
        # partition can come back to this worker with its offset moved on by the other owner.
        # Committed then, the older offset moved the group's offset back, and faust recorded
        # it: below every record admitted since, the commit stopped for good (the stock
        # worker's stall in the full drill's `clock` row: committed 11160, acknowledged from
        # 11184 on). An offset below the group's is not committed.
        # Likewise nothing is committed between an assignment and its seek: the offsets were
        # computed from acknowledgements that seek drops (CI: a stock worker committed 3449
        # over the 3526 the other one had committed, and its commits stopped).
        sought = self.__dict__.get("_mm_sought_generation")
        if sought is not None and sought != self.app.consumer_generation_id:
            log.info("not committing before the assignment's seek to the committed offsets")
            return False
        group = self.__dict__.get("_mm_group", {})
        fresh = {tp: o for tp, o in offsets.items() if group.get(tp) is None or o >= group[tp]}
        if len(fresh) < len(offsets):
            log.info(
                "not committing %d offset(s) below the group's (read before an assignment)",
                len(offsets) - len(fresh),
            )
        if not fresh:
            return False
        did_commit: bool = await super()._commit(fresh)
        if did_commit:
            self.__dict__.setdefault("_mm_sent", {}).update(fresh)
        return did_commit

    def ack(self, message: Any) -> bool:
        # faust drops an acknowledgement of an offset below the one it holds as committed (and
        # one whose message is marked acked already): that offset then holds the partition's
        # commit for good. Said when it happens (the commit stalls the watchdog ends).
        already = message.acked
        recorded: bool = super().ack(message)
        if not recorded and not already and self.app.topics.acks_enabled_for(message.topic):
            log.warning(
                "%s/%d: the acknowledgement of offset %d was not recorded (committed offset %s, "
                "acknowledged already: %s)",
                message.tp.topic,
                message.tp.partition,
                message.offset,
                self._committed_offset.get(message.tp),
                message.offset in self._acked_index.get(message.tp, ()),
            )
        return recorded

    def _new_offset(self, tp: TP) -> int | None:
        # The offset to commit: never past the lowest record not acknowledged. faust's own rule
        # lets one unacknowledged record at the committed offset through (committed 100, 100
        # unacked, 101-110 acked: it commits 111), which would lose a record parked for a retry
        # (streams.reliability) at a crash. A group that has not committed yet starts at the
        # first offset this consumer fetched of the partition.
        acked = self._acked[tp]
        committed = self._committed_offset[tp]
        if committed is None:
            committed = self.__dict__.get("_mm_first_offset", {}).get(tp)
        if acked and committed is not None and min(acked) > committed:
            return None
        result: int | None = super()._new_offset(tp)
        return result

    async def perform_seek(self) -> None:
        # At assignment: every partition is sought to its committed offset. Acknowledgements
        # recorded since its revocation are of records no agent processed in this generation
        # (faust acknowledges records of the previous one as it drops them); left in place they
        # would let the commit run past records not processed yet.
        generation = self.app.consumer_generation_id
        await super().perform_seek()
        # faust has just read the group's committed offsets (see `_commit_offsets`)
        self.__dict__["_mm_group"] = dict(self._committed_offset)
        # A partition the group never committed is not moved by that seek: records fetched
        # before it (held, or dropped with the last generation) would never come again, and a
        # partition with no new record stood still for good (a restarted analytics worker of a
        # fresh group). It is sought to the first offset this consumer fetched of it.
        first = self.__dict__.get("_mm_first_offset", {})
        never = {
            tp: first[tp]
            for tp in (self.assignment() if first else ())
            if tp in first and self._committed_offset.get(tp) is None
        }
        if never:
            # (a table's changelog is never committed: its partitions are the recovery's)
            changelogs = {t.changelog_topic.get_topic_name() for t in self.app.tables.values()}
            never = {tp: o for tp, o in never.items() if tp.topic not in changelogs}
        if never:
            await self._thread.seek_wait(never)
        # every partition's, a partition the group never committed included (its records
        # come again from the first this consumer fetched: `consumer.start_offset`)
        for tp in {*self._committed_offset, *self._acked, *self._acked_index}:
            self._acked.pop(tp, None)
            self._acked_index.pop(tp, None)
        # from now on the agents may admit records of this generation (see `sought_generation`)
        self.__dict__["_mm_sought_generation"] = generation

    @property
    def sought_generation(self) -> int | None:
        """The group generation whose seek to the committed offsets has completed. faust resumes
        the flow before that seek when no table needs restoring: records fetched meanwhile were
        processed and acknowledged, the seek then dropped their acknowledgements and delivered
        them again, and continuity held those copies for ever (a stock worker's commits stopped
        until its watchdog ended it). Continuity admits nothing of a generation before this."""
        value = self.__dict__.get("_mm_sought_generation")
        return None if value is None else int(value)

    async def seek_wait(self, partitions: Any) -> None:
        # A rebalance during a table recovery adds its standby partitions with no offset read
        # yet (None); the recovery under way then seeks them there: aiokafka raises ("Offset
        # must be a positive integer"), faust's recovery crashes and the worker with it (status
        # 1, seen in the drill's `isr` row). Such a partition is left where it is: the recovery
        # that rebalance starts reads its offset and seeks it.
        sought = {tp: offset for tp, offset in partitions.items() if offset is not None}
        if len(sought) < len(partitions):
            log.info(
                "not seeking %d partition(s) with no offset read yet (a rebalance under way)",
                len(partitions) - len(sought),
            )
        await super().seek_wait(sought)

    async def _drain_messages(self, fetcher: Any) -> None:
        # the loop feeding the agents' queues, delivering inline (see streams.transport.stream)
        await drain_messages(self, fetcher)

    async def _add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        log.warning(
            "offsets %d..%d of %s/%d skipped by the consumer: not acknowledged",
            offset_from,
            offset_to,
            tp.topic,
            tp.partition,
        )


class Buffer(ProducerBuffer):
    """faust's buffer of table changelog records, with a flush that waits for all of them.

    faust's `flush` gives up once a record takes more than 0.1 s to reach the Kafka client (its
    batch full, the broker slow) and does not count the record being handed over; the consumer
    then commits offsets whose table writes are still in this buffer, and a worker that stops
    or loses the partition loses them or writes them after the next owner restored the table:
    the stock table missed or repeated a batch across handovers. Here a flush returns only when
    every record put before it is in the client (whose own flush then delivers them)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.sending = 0
        self.in_order = asyncio.Lock()  # one hand-over at a time, in the order taken
        # a record Kafka refused (faust only logs it): the local stores are then ahead of their
        # changelogs, and a stop is not clean (see `streams.app.distrust_crashed_stores`)
        self.refused = 0

    def put(self, fut: Any) -> None:
        # a fenced role's changelog record carries its writer's generation, taken as the table
        # write is made: a restore skips it if it lands after a newer owner's (a zombie's)
        app: Any = self.app
        fence = fence_of(app) if app is not None else None
        if fence is not None:
            fence.note_write()
            generation = app.consumer_generation_id
            if generation is not None and generation >= 0:
                stamp_generation(fut, int(generation))
        super().put(fut)

    async def _send_pending(self, fut: Any) -> None:
        self.sending += 1  # taken from the queue (no longer in `size`) in the same step
        try:
            fut.add_done_callback(self._delivered)
            async with self.in_order:
                fence = fence_of(self.app) if self.app is not None else None
                if fence is not None and not await may_send(fence, lambda: self.should_stop):
                    # expelled from the group: the partition's new owner restored its table from
                    # the changelog already; this record must not follow. It is dropped, and the
                    # worker ends: its local store holds the write, its changelog does not, and
                    # only a start (`streams.app.distrust_crashed_stores`) restores the stores
                    # from the changelogs alone. Its supervisor starts it again.
                    FENCED.labels("changelog record").inc()
                    log.critical(
                        "table changelog: this worker was expelled from its group (paused past "
                        "its session?) with %d records not sent; they are dropped and the "
                        "worker exits (status %d) to restore its tables from the changelogs",
                        self.size + 1,
                        EXIT_FENCED,
                    )
                    logging.shutdown()
                    os._exit(EXIT_FENCED)
                await super()._send_pending(fut)
        finally:
            self.sending -= 1

    def _delivered(self, fut: Any) -> None:
        if not fut.cancelled() and fut.exception() is not None:
            self.refused += 1

    async def flush(self) -> None:
        waited = 0.0
        while self.size or self.sending:
            if self.state == "crashed":
                raise RuntimeError(
                    f"table changelog: {self.size} records not handed to Kafka (buffer crashed)"
                )
            if self.should_stop and not self.sending:
                # stopping: faust's task hands over at most one more record; the rest, here
                await self._send_pending(self.pending.get_nowait())
                continue
            self.message_sent.clear()
            try:
                await asyncio.wait_for(self.message_sent.wait(), timeout=1.0)
            except TimeoutError:
                waited += 1
                if waited % 10 == 0:
                    log.warning(
                        "table changelog: %d records still to hand to Kafka after %.0f s",
                        self.size + self.sending,
                        waited,
                    )

    async def flush_atmost(self, max_messages: int | None) -> int:
        if max_messages is None:  # faust's flush: everything
            await self.flush()
            return 0
        result: int = await super().flush_atmost(max_messages)
        return result


class Producer(faust_aiokafka.Producer):
    """faust's aiokafka producer asks for idempotence only inside transactions: always here;
    its changelog buffer flushes completely (`Buffer`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        buffer = Buffer(loop=self.loop, beacon=self.beacon)
        buffer.app = self.app
        self.buffer = buffer

    def _settings_extra(self) -> dict[str, Any]:
        return {"acks": "all", "enable_idempotence": True}


def refresh_metadata_on_stale_offsets(fetcher: type[Any] = aiokafka_fetcher.Fetcher) -> None:
    """aiokafka resets a partition with no committed offset by asking the leader its metadata
    names for the partition's offsets. After a leader change (the cluster's preferred-leader
    election moves leaders back to a restarted broker minutes later) the old leader answers
    NOT_LEADER_OR_FOLLOWER, and aiokafka asks it again every 100 ms without refreshing its
    metadata until the next periodic refresh (5 minutes; Java's client fixed the same in
    KAFKA-9535); every partition of the consumer waits meanwhile. Seen in the drill: a
    projections worker asked broker 4 1,435 times in 150 s, fetched nothing, and its watchdog
    ended it. Here a failed offset request with stale metadata asks for fresh metadata, as
    aiokafka's own `_retrieve_offsets` does."""
    original = fetcher._proc_offset_request
    if getattr(original, "refreshes_metadata", False):
        return

    async def _proc_offset_request(self: Any, node_id: int, topic_data: Any) -> Any:
        try:
            return await original(self, node_id, topic_data)
        except kafka_errors.KafkaError as exc:
            if exc.invalid_metadata:
                self._client.force_metadata_update()
            raise

    _proc_offset_request.refreshes_metadata = True  # type: ignore[attr-defined]
    fetcher._proc_offset_request = _proc_offset_request


class Transport(faust_aiokafka.Transport):
    """faust's aiokafka transport with the consumer and producer above."""

    Consumer: ClassVar[type[Consumer]] = Consumer
    Producer: ClassVar[type[Producer]] = Producer

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        refresh_metadata_on_stale_offsets()
