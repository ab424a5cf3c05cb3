"""workflows: the seeds' business flows as agents. Each step derives events with deterministic ids
(UUIDv5 of the cause and the step), occurring 1 ms after their cause, carrying the cause's trace
id, so a flow can be followed by its trace id and a replay derives the very same events (and the
notification outbox sends nothing twice).

Which cause notifies whom, of what and in which words is the catalogue in `streams.notices`
(welcome, order confirmed / rejected / status changed / cancelled / refunded, new order for the
shop, out of stock, back in stock, shopkeeper applied / approved / rejected); what the steps read
and write in PostgreSQL is `connectors.workflows`. Besides the notifications, an accepted order
derives an `analytics.tracked` PURCHASE, and `product.stock_alert_requested` is remembered
(`stock_alerts`) until the next back in stock tells each user who asked (and has
`back_in_stock_alerts` on), once. A shopkeeper's approval itself enables the shop: projections,
then search.

Client events the projections judge (a status change, a cancellation, a refund, a shopkeeper's
application or decision) notify only once the projections have applied them: one they refused
(an illegal transition, dead-lettered) tells nobody anything.

A step that fails is retried alone (the guard retries the batch; derived events already produced
are produced again with the same ids and are recognised downstream as the same events).
"""

from __future__ import annotations

import time
import uuid
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from connectors.base import DependencyDown
from connectors.workflows import Judgement, WorkflowStore
from streams import tracing
from streams.agents._read_side import PgReader, ProjectionsProgress, install_agents, wait_projected
from streams.notices import NOTICES, OWNER, USER, WATCHERS, fill
from streams.reliability import Record, Rejection

if TYPE_CHECKING:
    from streams.runtime import Runtime

__all__ = ["derived_id", "install"]

_NS = uuid.UUID("6d6d6172-742d-4e6f-7469-667900000000")
#: how long a step waits for a row the projections have not written yet, then goes without it
_UNKNOWN_ROW_AFTER_S = 15.0

#: client events whose legality the projections decide (see the module docstring)
_JUDGED = frozenset(
    {
        "order.status_changed",
        "order.cancelled",
        "order.refunded",
        "shopkeeper.applied",
        "shopkeeper.approved",
        "shopkeeper.rejected",
    }
)

#: (event type, step, data, record key) of a derived event
_Derived = tuple[str, str, dict[str, Any], str]


def derived_id(cause_id: str, step: str) -> str:
    return str(uuid.uuid5(_NS, f"{cause_id}:{step}"))


def _purchase(ev: dict[str, Any]) -> dict[str, Any]:
    """The analytics event of an accepted order (the revenue the seeds' trackAnalytics kept)."""
    d = ev["data"]
    return {
        # the order's browsing session, so search -> purchase conversion joins on it
        "session_id": d.get("session_id") or f"order-{d['order_id']}",
        "user_id": d["user_id"],
        "kind": "PURCHASE",
        "page": None,
        "query": None,
        "results_count": None,
        "product_id": None,
        "shop_id": d["shop_id"],
        "order_id": d["order_id"],
        "quantity": None,
        "value_paise": d.get("total_paise") or 0,
        "properties": {
            "derived_from": "order.accepted",
            "items": str(sum(int(i["quantity"]) for i in d["items"])),
        },
    }


#: event id -> when this process first saw it (a client sets occurred_at: it may lie ahead)
_FIRST_SEEN: dict[str, float] = {}


def _waited_long_enough(ev: dict[str, Any]) -> bool:
    """Has `ev` waited `_UNKNOWN_ROW_AFTER_S` for a row, counted from when it occurred or was
    first seen here, whichever is earlier?"""
    now = time.time()
    if len(_FIRST_SEEN) > 100_000:
        _FIRST_SEEN.clear()
    seen = _FIRST_SEEN.setdefault(str(ev["id"]), now)
    return bool(now - min(seen, ev["occurred_at"].timestamp()) > _UNKNOWN_ROW_AFTER_S)


def _passed(r: Record) -> bool:
    """Has `r` waited long enough for a row the projections have not written (15 s from when it
    occurred or was first seen)? Then the row was never created: the step goes without it.
    (Asking the projections' group for its offsets per record instead paused and resumed the
    partitions so often under load that aiokafka's fetcher crashed: see the note.)"""
    return r.topic.endswith(".redrive") or _waited_long_enough(r.event)


async def _judge(
    conn: Any, records: list[Record], progress: ProjectionsProgress
) -> tuple[set[str], dict[str, str]]:
    """(ids of the judged events of `records` the projections refused, event id -> the user of
    the row each applied one changed). Returns once every judged event is applied (its row holds
    the event's version), refused (recorded in `projection_refusals`), or passed over (the
    projections' group committed past it: applied if its row holds a newer version, else
    refused before refusals were recorded)."""
    seen: dict[str, Judgement] = {}

    async def undecided(conn: Any, waiting: list[Record]) -> list[Record]:
        found = await WorkflowStore.judgements(conn, [r.event for r in waiting])
        seen.update(found)
        return [r for r in waiting if not found[str(r.event["id"])].decided]

    judged = [r for r in records if r.event.get("type") in _JUDGED]
    passed = await wait_projected(conn, judged, progress, pending=undecided)
    refused = {eid for eid, j in seen.items() if j.refused}
    if passed:  # refusals are recorded before the projections commit: read them again
        ids = [str(r.event["id"]) for r in passed]
        again = await WorkflowStore.refused(conn, ids)
        refused |= {eid for eid in ids if eid in again or not seen[eid].newer}
    return refused, {eid: j.user_id for eid, j in seen.items() if j.user_id is not None}


async def _shop_owner(conn: Any, ev: dict[str, Any], r: Record) -> str | None:
    shop = ev["data"]["shop_id"]
    owner = await WorkflowStore.shop_owner(conn, shop)
    if owner is None and not _passed(r):
        raise DependencyDown(f"shop {shop} not projected yet")
    return owner  # None: a shop that was never created, no push


async def _product(conn: Any, ev: dict[str, Any], r: Record) -> tuple[str, str | None, str | None]:
    """(product name, shop name, shop owner) of a stock event's product."""
    pid = ev["data"]["product_id"]
    found = await WorkflowStore.product(conn, pid)
    if found is None or found[2] is None:
        if not _passed(r):
            raise DependencyDown(f"product {pid} or its shop not projected yet")
        return (found[0] if found else pid), None, None
    return found


async def _watchers(conn: Any, ev: dict[str, Any]) -> list[str]:
    """The users a back-in-stock event tells (their alerts marked as told by it)."""
    d = ev["data"]
    rows = await WorkflowStore.claim_alerts(conn, d["product_id"], str(ev["id"]), ev["occurred_at"])
    if any(not known for _, known, _ in rows) and not _waited_long_enough(ev):
        # a user the projections have not written yet (another topic): wait for the row
        # rather than use up their alert unheard (the marking above is kept: idempotent)
        raise DependencyDown(f"a user who asked about {d['product_id']} is not projected yet")
    return [user for user, known, wants in rows if known and wants]


async def _derive(conn: Any, ev: dict[str, Any], r: Record) -> list[_Derived]:
    """The events `ev` derives: its notices (`streams.notices`) to their recipients, and an
    accepted order's analytics event."""
    t, d = ev["type"], ev["data"]
    if t == "product.stock_alert_requested":
        await WorkflowStore.remember_alert(conn, ev)
        return []
    notices = NOTICES.get(t, ())
    facts = dict(d)
    owner: str | None = None
    if notices and t.startswith("product."):
        facts["product"], facts["shop"], owner = await _product(conn, ev, r)
    elif any(n.to == OWNER for n in notices):
        owner = await _shop_owner(conn, ev, r)
    watchers = await _watchers(conn, ev) if any(n.to == WATCHERS for n in notices) else []
    out: list[_Derived] = []
    for notice in notices:
        if notice.to == USER:
            recipients = [d["user_id"]]
        else:
            recipients = watchers if notice.to == WATCHERS else [owner] if owner else []
        for user in recipients:
            step, data = fill(notice, facts, user)
            out.append(("notification.requested", step, data, user))
    if t == "order.accepted":
        purchase = _purchase(ev)  # keyed by its session, as every analytics.tracked
        out.append(("analytics.tracked", "analytics", purchase, purchase["session_id"]))
    return out


def install(rt: Runtime) -> None:
    app = rt.app
    progress = ProjectionsProgress(rt.settings)

    async def write(records: list[Record], db: PgReader) -> list[Rejection]:
        pending = []
        async with db.connection() as conn:
            refused, users = await _judge(conn, records, progress)
            for r in records:
                ev = r.event
                if str(ev.get("id")) in refused:
                    continue  # an illegal transition: it changed nothing, it tells nobody
                user = users.get(str(ev.get("id")))
                if user is not None and user != ev["data"].get("user_id"):
                    # told to the user the row names (the order's customer, the applicant),
                    # never to one the client wrote into the event
                    ev = {**ev, "data": {**ev["data"], "user_id": user}}
                for type_, step, data, key in await _derive(conn, ev, r):
                    at = ev["occurred_at"] + timedelta(milliseconds=1)
                    eid = derived_id(str(ev["id"]), step)
                    trace_id = ev.get("trace_id") or str(ev["id"])
                    topic, value = await rt.encode(type_, eid, at, trace_id, data)
                    pending.append(
                        await app.producer.send(
                            topic,
                            key.encode(),
                            value,
                            partition=None,
                            timestamp=at.timestamp(),
                            headers=[tracing.derived(r, trace_id, eid)],
                        )
                    )
        for fut in pending:  # delivered before the batch's offsets are committed
            await fut
        return []

    install_agents(rt, "workflow", ("user", "order", "product", "shopkeeper"), write)
