"""Live updates: who sees which event, and the hub's positions (resume without gaps or repeats),
driven directly on the event loop: no Kafka, no registry, no consumer thread."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from api.live import LiveEvent, LiveHub, Subscription, _Client, _live_event
from api.problems import Problem
from core.settings import Settings
from schemas.catalog import EVENT_TYPES

T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)

# Nothing listens on port 1: a hub that reached for the registry would fail loudly.
SETTINGS = Settings(
    _env_file=None,
    schema_registry_url="http://127.0.0.1:1",
    live_buffer_per_partition=100,
    live_client_queue=600,
)

Batch = list[tuple[int, int, LiveEvent | None]]


# --- building events -------------------------------------------------------------------------
def raw(type_: str, at: int = 0, **data: Any) -> dict[str, Any]:
    """A decoded record as the hub's decoder returns it, from the catalog's example."""
    return {
        "id": uuid.uuid4(),
        "type": type_,
        "occurred_at": T0 + timedelta(seconds=at),
        "trace_id": "t",
        "data": {**EVENT_TYPES[type_].example, **data},
    }


def live(slot: int, offset: int, type_: str, **data: Any) -> LiveEvent:
    e = _live_event(slot, offset, raw(type_, **data))
    assert e is not None, type_
    return e


def order(
    slot: int,
    offset: int,
    user: str = "u1",
    order_id: str = "o1",
    shop: str = "s1",
    type_: str = "order.created",
) -> LiveEvent:
    return live(slot, offset, type_, user_id=user, order_id=order_id, shop_id=shop)


def stock(slot: int, offset: int, product: str = "p1", shop: str = "s1") -> LiveEvent:
    return live(slot, offset, "product.stock_changed", product_id=product, shop_id=shop)


# --- a hub with two partitions: slot 0 the order topic's, slot 1 the product topic's ----------
def started_hub(
    starts: Iterable[int] = (0, 0), ends: Iterable[int] | None = None, **settings: Any
) -> LiveHub:
    """A hub as the consumer thread leaves it once it has assigned its partitions (call on the
    event loop)."""
    hub = LiveHub(SETTINGS.model_copy(update=settings) if settings else SETTINGS)
    starts = list(starts)
    hub._started(
        {(hub.topics[0], 0): 0, (hub.topics[1], 0): 1},
        starts,
        list(starts if ends is None else ends),
    )
    return hub


def got(client: _Client) -> list[tuple[int, int]]:
    """(slot, offset) of each event queued to a client."""
    return [(e.slot, e.offset) for e, _ in client.queue]


def ids(client: _Client) -> list[str]:
    return [position_id for _, position_id in client.queue]


def refused(hub: LiveHub, last_event_id: str) -> Problem:
    with pytest.raises(Problem) as caught:
        hub.subscribe(Subscription(users=frozenset({"u1"})), last_event_id)
    return caught.value


U1 = Subscription(users=frozenset({"u1"}))


# --- what a subscription matches -------------------------------------------------------------
def test_stock_changes_reach_only_the_followers_of_that_product() -> None:
    sub = Subscription(products=frozenset({"p1"}))
    assert sub.matches(stock(1, 0, product="p1"))
    assert not sub.matches(stock(1, 1, product="p2"))
    # following the shop or a user does not bring its products' stock
    assert not Subscription(shops=frozenset({"s1"})).matches(stock(1, 2, product="p1", shop="s1"))
    assert not Subscription(users=frozenset({"u1"})).matches(stock(1, 3, product="p1"))
    # nor does an order event match a product followed under the same id
    assert not Subscription(products=frozenset({"o1"})).matches(order(0, 0, order_id="o1"))


@pytest.mark.parametrize(
    "type_",
    [
        "order.created",
        "order.accepted",
        "order.rejected",
        "order.cancelled",
        "order.status_changed",
        "order.refunded",
    ],
)
def test_every_order_event_reaches_the_followers_of_its_user_and_of_the_order(type_: str) -> None:
    e = order(0, 0, user="u1", order_id="o1", type_=type_)
    assert Subscription(users=frozenset({"u1"})).matches(e)
    assert Subscription(orders=frozenset({"o1"})).matches(e)
    assert not Subscription(users=frozenset({"u2"}), orders=frozenset({"o2"})).matches(e)
    assert not Subscription().matches(e)


def test_a_shops_followers_see_its_new_orders_but_not_their_later_changes() -> None:
    shop = Subscription(shops=frozenset({"s1"}))
    assert shop.matches(order(0, 0, shop="s1", type_="order.created"))
    assert not shop.matches(order(0, 1, shop="s2", type_="order.created"))
    for type_ in ("order.accepted", "order.cancelled", "order.status_changed"):
        assert not shop.matches(order(0, 2, shop="s1", type_=type_))


def test_a_customer_never_sees_another_customers_order_even_when_following_it() -> None:
    mine = Subscription(orders=frozenset({"o1", "o2"}), shops=frozenset({"s1"}), only_user="u1")
    assert mine.matches(order(0, 0, user="u1", order_id="o1"))
    assert not mine.matches(order(0, 1, user="u2", order_id="o2"))
    assert not mine.matches(order(0, 2, user="u2", order_id="o9", shop="s1"))


def test_a_shopkeeper_sees_only_the_orders_placed_with_their_shop() -> None:
    keeper = Subscription(
        users=frozenset({"u1"}), orders=frozenset({"o2"}), shops=frozenset({"s1"}), only_shop="s1"
    )
    assert keeper.matches(order(0, 0, user="u1", order_id="o1", shop="s1"))
    assert not keeper.matches(order(0, 1, user="u1", order_id="o1", shop="s2"))
    assert not keeper.matches(order(0, 2, user="u9", order_id="o2", shop="s2"))
    assert keeper.matches(order(0, 3, user="u9", order_id="o2", shop="s1", type_="order.accepted"))


def test_principal_narrowing_does_not_apply_to_stock_changes() -> None:
    sub = Subscription(products=frozenset({"p1"}), only_user="u1", only_shop="s1")
    assert sub.matches(stock(1, 0, product="p1", shop="s2"))


# --- what a client is sent of each record ----------------------------------------------------
@pytest.mark.parametrize(
    ("type_", "status"),
    [
        ("order.created", "PENDING"),
        ("order.accepted", "PROCESSING"),
        ("order.rejected", "REJECTED"),
        ("order.cancelled", "CANCELLED"),
        ("order.refunded", "REFUNDED"),
    ],
)
def test_an_order_event_carries_the_orders_status_after_it(type_: str, status: str) -> None:
    ev = raw(type_, at=5, order_id="o1", user_id="u1", shop_id="s1")
    e = _live_event(3, 42, ev)
    assert e is not None
    assert (e.slot, e.offset, e.type) == (3, 42, type_)
    assert e.data["status"] == status
    assert e.data["event_id"] == str(ev["id"])
    assert e.data["occurred_at"] == "2026-11-23T10:00:05+00:00"
    assert (e.data["order_id"], e.data["user_id"], e.data["shop_id"]) == ("o1", "u1", "s1")


def test_a_status_change_carries_its_new_status_and_where_it_came_from() -> None:
    e = _live_event(
        0, 0, raw("order.status_changed", from_status="PROCESSING", to_status="COMPLETED")
    )
    assert e is not None
    assert e.data["status"] == "COMPLETED"
    assert e.data["from_status"] == "PROCESSING"


def test_an_order_event_carries_its_reason_and_total_only_when_it_has_them() -> None:
    rejected = _live_event(0, 0, raw("order.rejected", reason="INSUFFICIENT_STOCK"))
    assert rejected is not None and rejected.data["reason"] == "INSUFFICIENT_STOCK"
    created = _live_event(0, 1, raw("order.created", total_paise=5200))
    assert created is not None and created.data["total_paise"] == 5200
    cancelled = _live_event(0, 2, raw("order.cancelled", reason=None))
    assert cancelled is not None and "reason" not in cancelled.data
    # nothing else of the record leaks into the event (items, notes, payment...)
    assert set(created.data) <= {
        "event_id",
        "type",
        "occurred_at",
        "order_id",
        "user_id",
        "shop_id",
        "status",
        "reason",
        "from_status",
        "total_paise",
    }


def test_a_stock_change_carries_the_new_stock() -> None:
    ev = raw(
        "product.stock_changed",
        product_id="p1",
        shop_id="s1",
        stock_after=46,
        delta=-2,
        reason="ORDER_RESERVED",
        sequence=7,
    )
    e = _live_event(1, 9, ev)
    assert e is not None
    assert e.data == {
        "event_id": str(ev["id"]),
        "type": "product.stock_changed",
        "occurred_at": "2026-11-23T10:00:00+00:00",
        "product_id": "p1",
        "shop_id": "s1",
        "stock": 46,
        "delta": -2,
        "in_stock": True,
        "reason": "ORDER_RESERVED",
        "sequence": 7,
    }
    sold_out = _live_event(1, 10, raw("product.stock_changed", stock_after=0, delta=-46))
    assert sold_out is not None and sold_out.data["in_stock"] is False


@pytest.mark.parametrize(
    "type_", ["product.created", "product.out_of_stock", "product.back_in_stock", "user.updated"]
)
def test_other_events_are_not_sent_live(type_: str) -> None:
    assert _live_event(0, 0, raw(type_)) is None


def test_an_unknown_order_event_type_is_not_sent_live() -> None:
    ev = raw("order.created")
    ev["type"] = "order.teleported"
    assert _live_event(0, 0, ev) is None


# --- the hub ---------------------------------------------------------------------------------
def test_constructing_a_hub_does_not_reach_the_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: Any) -> None:
        raise AssertionError(f"network access: {args}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    hub = LiveHub(SETTINGS)
    assert hub.decoder.needs(1)  # no schema fetched
    assert not hub.ready.is_set()


async def test_a_client_cannot_subscribe_before_the_hub_has_its_partitions() -> None:
    hub = LiveHub(SETTINGS)
    problem = refused(hub, "")
    assert problem.status == 503
    assert problem.headers["Retry-After"] == "2"


async def test_a_new_client_gets_only_what_happens_after_it_connects() -> None:
    hub = started_hub()
    hub._dispatch([(0, 0, order(0, 0)), (1, 0, stock(1, 0))])
    client = hub.subscribe(Subscription(users=frozenset({"u1"}), products=frozenset({"p1"})), None)
    assert got(client) == []
    hub._dispatch([(0, 1, order(0, 1)), (1, 1, stock(1, 1))])
    assert got(client) == [(0, 1), (1, 1)]
    assert client.wake.is_set()


async def test_a_client_connecting_while_the_hub_catches_up_does_not_get_old_events() -> None:
    # at start the hub reads back the last records (offsets 0..4); the partition's end was 5
    hub = started_hub(starts=(0, 0), ends=(5, 0))
    client = hub.subscribe(U1, None)
    hub._dispatch([(0, o, order(0, o)) for o in range(5)])
    assert got(client) == []
    hub._dispatch([(0, 5, order(0, 5))])
    assert got(client) == [(0, 5)]
    # ...while those old events are kept for a client resuming from before them
    resumed = hub.subscribe(U1, "3.0")
    assert got(resumed) == [(0, 3), (0, 4), (0, 5)]


async def test_each_event_id_is_every_partitions_next_offset_after_it() -> None:
    hub = started_hub(starts=(10, 20))
    client = hub.subscribe(Subscription(users=frozenset({"u1"}), products=frozenset({"p1"})), None)
    hub._dispatch([(0, 10, order(0, 10)), (1, 20, stock(1, 20)), (0, 11, order(0, 11))])
    assert ids(client) == ["11.20", "11.21", "12.21"]
    # records that match no one (undecodable, another user's) still move the position on
    hub._dispatch([(0, 12, None), (1, 21, stock(1, 21, product="p2")), (0, 13, order(0, 13))])
    hub._dispatch([(1, 22, None), (1, 23, stock(1, 23))])
    assert ids(client)[3:] == ["14.22", "14.24"]
    # ...even when nothing else follows them in the batch
    hub._dispatch([(0, 14, None)])
    assert client.position == hub.head == [15, 24]
    hub._dispatch([(1, 24, stock(1, 24))])
    assert ids(client)[5:] == ["15.25"]


def _history(hub: LiveHub) -> None:
    """Events of u1 (slot 0) and stock of p1 (slot 1), interleaved with undecodable records and
    events of other users and products, in batches of every size."""
    batches: list[Batch] = [
        [(0, 0, order(0, 0)), (0, 1, None), (1, 0, stock(1, 0))],
        [(1, 1, stock(1, 1, product="p2")), (0, 2, order(0, 2, user="u2"))],
        [(0, 3, order(0, 3, order_id="o2")), (1, 2, None), (1, 3, stock(1, 3))],
        [(1, 4, stock(1, 4)), (0, 4, None), (0, 5, order(0, 5, type_="order.accepted"))],
        [(0, 6, order(0, 6, user="u3")), (1, 5, stock(1, 5, product="p3"))],
        [(1, 6, stock(1, 6)), (0, 7, order(0, 7))],
        [(0, 8, None)],
        [(0, 9, order(0, 9)), (1, 7, stock(1, 7)), (1, 8, None), (0, 10, order(0, 10, user="u9"))],
    ]
    for batch in batches:
        hub._dispatch(batch)


async def test_resuming_from_any_event_gets_exactly_the_matching_events_after_it() -> None:
    sub = Subscription(users=frozenset({"u1"}), products=frozenset({"p1"}))
    hub = started_hub()
    first = hub.subscribe(sub, None)
    _history(hub)
    seen = got(first)
    assert seen == [
        (0, 0),
        (1, 0),
        (0, 3),
        (1, 3),
        (1, 4),
        (0, 5),
        (1, 6),
        (0, 7),
        (0, 9),
        (1, 7),
    ]
    for k, last_event_id in enumerate(ids(first)):
        again = hub.subscribe(sub, last_event_id)
        # nothing missed, nothing twice; partition by partition, each in offset order
        assert sorted(got(again)) == sorted(seen[k + 1 :]), last_event_id
        for slot in (0, 1):
            mine = [o for s, o in got(again) if s == slot]
            assert mine == sorted(mine)
        # and from any of the replayed events on, the same holds again
        for j, replayed_id in enumerate(ids(again)):
            assert sorted(got(hub.subscribe(sub, replayed_id))) == sorted(got(again)[j + 1 :])


async def test_a_resumed_client_then_gets_the_live_events_once() -> None:
    sub = Subscription(users=frozenset({"u1"}), products=frozenset({"p1"}))
    hub = started_hub()
    first = hub.subscribe(sub, None)
    _history(hub)
    resumed = hub.subscribe(sub, ids(first)[4])
    assert hub.head == [11, 9]
    hub._dispatch([(0, 11, order(0, 11)), (0, 12, order(0, 12, user="u2")), (1, 9, stock(1, 9))])
    assert got(resumed) == [(0, 5), (0, 7), (0, 9), (1, 6), (1, 7), (0, 11), (1, 9)]
    assert got(first)[-2:] == [(0, 11), (1, 9)]
    # resuming from the last event received gets nothing until something new happens
    latest = hub.subscribe(sub, ids(first)[-1])
    assert got(latest) == []
    assert latest.position == hub.head


async def test_resuming_from_a_position_where_nothing_matched_gets_only_later_events() -> None:
    hub = started_hub()
    hub._dispatch([(0, 0, order(0, 0, user="u2")), (0, 1, None), (0, 2, order(0, 2))])
    client = hub.subscribe(U1, "1.0")
    assert got(client) == [(0, 2)]
    assert ids(client) == ["3.0"]


async def test_records_the_hub_has_already_had_are_ignored() -> None:
    hub = started_hub()
    client = hub.subscribe(U1, None)
    hub._dispatch([(0, 0, order(0, 0)), (0, 1, order(0, 1))])
    # the consumer hands over records below the head again (say after a fetch was retried)
    hub._dispatch([(0, 0, order(0, 0)), (0, 1, order(0, 1)), (0, 2, order(0, 2))])
    assert got(client) == [(0, 0), (0, 1), (0, 2)]
    assert ids(client) == ["1.0", "2.0", "3.0"]
    assert [e.offset for e in hub.buffers[0]] == [0, 1, 2]
    assert hub.head == [3, 0]


async def test_a_position_older_than_the_kept_events_is_refused_with_410() -> None:
    hub = started_hub()  # keeps 100 events per partition
    hub._dispatch([(0, o, order(0, o)) for o in range(101)])
    assert hub.floor == [1, 0]
    problem = refused(hub, "0.0")
    assert problem.status == 410
    assert problem.slug == "position-too-old"
    assert f"{hub.topics[0]}/0" in problem.detail
    assert hub.topics[1] not in problem.detail
    # the oldest position still kept replays everything after it
    client = hub.subscribe(U1, "1.0")
    assert got(client) == [(0, o) for o in range(1, 101)]


async def test_a_position_before_what_the_hub_read_at_start_is_refused_with_410() -> None:
    hub = started_hub(starts=(50, 7), ends=(50, 7))
    assert refused(hub, "49.7").status == 410
    assert refused(hub, "50.6").status == 410
    assert got(hub.subscribe(U1, "50.7")) == []


@pytest.mark.parametrize(
    "last_event_id", ["abc", "12", "1.2.3", "1.x", "1..2", "1.-2", "1.2.", ".", "1,2"]
)
async def test_a_malformed_last_event_id_is_refused_with_400(last_event_id: str) -> None:
    hub = started_hub()
    problem = refused(hub, last_event_id)
    assert problem.status == 400
    assert problem.slug == "bad-last-event-id"
    assert "2 offsets" in problem.detail
    assert hub.clients == set()


async def test_a_client_that_does_not_read_is_dropped_and_one_that_reads_is_not() -> None:
    hub = started_hub()
    stuck = hub.subscribe(U1, None)
    reading = hub.subscribe(U1, None)
    for o in range(600):
        hub._dispatch([(0, o, order(0, o))])
        reading.queue.popleft()
    assert len(stuck.queue) == 600 and not stuck.too_slow
    stuck.wake.clear()
    hub._dispatch([(0, 600, order(0, 600))])
    assert stuck.too_slow and stuck.wake.is_set()
    assert not reading.too_slow and got(reading) == [(0, 600)]
    # once dropped, nothing more is queued to it; the reader carries on
    reading.queue.clear()
    hub._dispatch([(0, 601, order(0, 601))])
    assert len(stuck.queue) == 600 and got(stuck)[-1] == (0, 599)
    assert got(reading) == [(0, 601)]
    # the dropped client resumes from its last event without losing one
    assert got(hub.subscribe(U1, ids(stuck)[-1])) == [(0, 600), (0, 601)]


async def test_a_client_is_not_dropped_for_events_that_do_not_concern_it() -> None:
    hub = started_hub()
    client = hub.subscribe(U1, None)
    hub._dispatch([(0, o, order(0, o, user="u2")) for o in range(700)])
    assert not client.too_slow and got(client) == []
    assert client.position == [700, 0]


async def test_a_long_replay_on_resume_does_not_drop_the_client() -> None:
    hub = started_hub(live_buffer_per_partition=1000)
    hub._dispatch([(0, o, order(0, o)) for o in range(700)])
    client = hub.subscribe(U1, "0.0")
    assert len(client.queue) == 700 and not client.too_slow
