"""The drill's verifier: every acknowledged event (the ledger), per store.

- rows (PostgreSQL): each acknowledged order is there and accepted (PROCESSING), with its lines,
  none twice;
- stock: each product's movements are one per acknowledged event and form one chain (sequences
  1..n, each stock_after the previous plus its delta), and its stock is the initial stock plus
  the sum of the acknowledged movements;
- cache and search: Redis and Typesense equal PostgreSQL (`mohallamart check`'s comparison);
- messages: each acknowledged email notification was sent (its title in the mailbox), and the
  repeats (the same message id delivered more than once) are counted and shown;
- analytics: every final 1-minute sales window of the drill's shops equals an oracle computed
  from the ledger (revenue, orders, units per shop and minute of acceptance), and no window the
  oracle has is missing before a shop's newest final one.

"Lost" is what an acknowledged event should have made and is missing; "doubled" what is there
more than once where the store can show it (lines, movements, chain breaks); "repeats" messages
delivered again (at least once delivery allows them only for messages in flight at a crash).
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from core.settings import Settings
from mohallamart.drill.load import Catalogue, Ledger

__all__ = [
    "StoreResult",
    "Verdict",
    "Verifier",
    "judge_sales",
    "judge_stock",
    "query",
    "sales_oracle",
    "verify",
]


@dataclass
class StoreResult:
    store: str
    checked: int
    lost: int = 0
    doubled: int | None = 0  # None: the store cannot show a double
    repeats: int | None = None
    detail: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return self.lost == 0 and not self.doubled


@dataclass
class Verdict:
    stores: list[StoreResult]
    settled_s: float  # how long the pipeline took to apply everything after the load paused

    @property
    def clean(self) -> bool:
        return all(s.clean for s in self.stores)


class _Mailbox:
    """The local SMTP server's Maildir, read incrementally (files are never rewritten)."""

    def __init__(self, maildir: Path) -> None:
        self.maildir = maildir
        self.seen: dict[str, tuple[str, str, str]] = {}  # file -> (rcpt, subject, message id)

    def messages(self, to: str) -> list[tuple[str, str]]:
        for sub in ("new", "cur"):
            folder = self.maildir / sub
            if not folder.is_dir():
                continue
            for entry in os.scandir(folder):
                name = entry.name.split(":", 1)[0]
                if name in self.seen:
                    continue
                raw = Path(entry.path).read_bytes()
                msg = email.message_from_bytes(raw, policy=email.policy.compat32)
                self.seen[name] = (
                    str(msg["X-Smtp-Rcpt-To"] or ""),
                    str(msg["Subject"] or ""),
                    str(msg["Message-ID"] or "").strip(),
                )
        return [(subject, mid) for rcpt, subject, mid in self.seen.values() if rcpt == to]


def query(dsn: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
        return conn.execute(sql, params).fetchall()


def judge_stock(
    stock: dict[str, int],
    movements: Counter[str],
    chains: dict[str, list[tuple[int, int, int]]],
    found: dict[str, int],
) -> StoreResult:
    """Each product: one movement per acknowledged event (fewer: lost, more: doubled), one chain
    (a break is a movement applied twice or out of order: doubled), the stock the ledger says.
    `chains`: product -> its movements (sequence, delta, stock_after) by sequence."""
    r = StoreResult("stock", sum(movements.values()))
    r.doubled = 0
    for pid in stock:
        chain = chains.get(pid, [])
        want = movements[pid]
        r.lost += max(0, want - len(chain))
        r.doubled += max(0, len(chain) - want)
        level = 0
        for n, (seq, delta, after) in enumerate(chain, start=1):
            if seq != n or after != level + delta:
                r.doubled += 1
                r.detail.append(f"{pid}: movement {n} sequence {seq}, {level}{delta:+d}->{after}")
                break
            level = after
    off = {p: (found.get(p), v) for p, v in stock.items() if found.get(p) != v}
    if off:
        if not (r.lost or r.doubled):
            r.lost += len(off)  # the figure is wrong although every movement is there
        r.detail.append(
            f"{len(off)} products' stock differs (found, expected), e.g. {list(off.items())[:3]}"
        )
    return r


def sales_oracle(
    sales: dict[str, tuple[str, int, int, int]],
) -> dict[tuple[str, int], tuple[int, int, int]]:
    """The 1-minute sales windows the acknowledged orders make: (shop, window start ms) ->
    (revenue, orders, units). An order counts when it is accepted, and its acceptance is 1 ms
    after its creation (`streams.stock_book`: the derived event's time)."""
    out: dict[tuple[str, int], tuple[int, int, int]] = {}
    for shop, at_ms, total, units in sales.values():
        accepted = at_ms + 1
        key = (shop, accepted - accepted % 60_000)
        revenue, orders, n = out.get(key, (0, 0, 0))
        out[key] = (revenue + total, orders + 1, n + units)
    return out


def judge_sales(
    want: dict[tuple[str, int], tuple[int, int, int]],
    rows: dict[tuple[str, int], tuple[int, int, int, bool]],
    late: dict[tuple[str, int], int] | None = None,
) -> StoreResult:
    """Every final window equals the oracle (fewer orders: lost, more: doubled); a window the
    oracle has, older than a final window of its shop, and missing or not final, is lost.
    Windows not final yet are not judged (the role may still be reading). An order accepted after
    its window closed (the watermark had passed it: e.g. the stock role was down while the other
    sources moved on) is late, not lost: `late` counts them per window (`analytics_late`), and
    such a window is judged on its orders only."""
    late = late or {}
    r = StoreResult("analytics (sales 1m) = SQL oracle", 0)
    notes: list[str] = []  # windows with late orders: after the differences in the detail
    newest: dict[str, int] = {}
    for (shop, start), (*_v, final) in rows.items():
        if final:
            newest[shop] = max(newest.get(shop, start), start)
    for key, expected in want.items():
        shop, start = key
        got = rows.get(key)
        if got is None or not got[3]:
            if start < newest.get(shop, -1):
                behind = late.get(key, 0)
                if got is None and behind == expected[1]:
                    # every order of the minute came after its window closed: no row, all late
                    notes.append(f"{shop} {start}: all {behind} orders late (in analytics_late)")
                    continue
                r.lost += expected[1] - (behind if got is None else 0)
                r.detail.append(f"{shop} {start}: not final, a later window is")
            continue
        r.checked += 1
        behind = late.get(key, 0)
        if behind and got[1] + behind == expected[1]:
            notes.append(f"{shop} {start}: {behind} orders late (in analytics_late)")
            continue
        if got[:3] != expected:
            diff = got[1] - expected[1]
            if diff < 0:
                r.lost += -diff
            elif diff > 0:
                r.doubled = (r.doubled or 0) + diff
            else:
                r.lost += 1  # same orders, other sums
            r.detail.append(f"{shop} {start}: found {got[:3]}, expected {expected}")
    for key, (_revenue, orders, _units, final) in rows.items():
        if final and orders and key not in want:  # sales no acknowledged order made
            r.doubled = (r.doubled or 0) + orders
            r.detail.append(f"{key[0]} {key[1]}: {orders} orders the oracle does not have")
    r.detail.extend(notes)
    return r


class Verifier:
    def __init__(self, settings: Settings, catalogue: Catalogue, ledger: Ledger) -> None:
        self.settings, self.catalogue, self.ledger = settings, catalogue, ledger
        self.dsn = settings.postgres_dsn
        self.mailbox = _Mailbox(settings.stack_dir / "smtp" / "maildir")

    # --- what the stores hold ------------------------------------------------------------------
    def _orders(self, ids: list[str]) -> tuple[dict[str, str], Counter[str]]:
        status = {
            str(k): str(v)
            for k, v in query(
                self.dsn, "SELECT order_id, status FROM orders WHERE order_id = ANY(%s)", ids
            )
        }
        lines: Counter[str] = Counter(
            {
                str(k): int(n)
                for k, n in query(
                    self.dsn,
                    "SELECT order_id, count(*) FROM order_items WHERE order_id = ANY(%s) "
                    "GROUP BY order_id",
                    ids,
                )
            }
        )
        return status, lines

    def _movements(self, pids: list[str]) -> dict[str, list[tuple[int, int, int]]]:
        chains: dict[str, list[tuple[int, int, int]]] = {}
        for pid, seq, delta, after in query(
            self.dsn,
            "SELECT product_id, sequence, delta, stock_after FROM inventory_movements "
            "WHERE product_id = ANY(%s) ORDER BY product_id, sequence",
            pids,
        ):
            chains.setdefault(str(pid), []).append((int(seq), int(delta), int(after)))
        return chains

    def _sent(self) -> int:
        row = query(
            self.dsn,
            "SELECT count(*) FROM notification_outbox WHERE user_id = %s AND kind = 'GENERIC' "
            "AND status = 'SENT'",
            self.catalogue.user,
        )
        return int(row[0][0]) if row else 0

    # --- waiting for the pipeline -------------------------------------------------------------
    def settled(self) -> bool:
        orders, _stock, movements, emails = self.ledger.snapshot()
        status, _ = self._orders(list(orders))
        if sum(1 for s in status.values() if s == "PROCESSING") < len(orders):
            return False
        pids = list(movements)
        found = query(
            self.dsn,
            "SELECT count(*) FROM inventory_movements WHERE product_id = ANY(%s)",
            pids,
        )[0][0]
        if int(found) < sum(movements.values()):
            return False
        return self._sent() >= len(emails)

    def wait_settled(self, timeout_s: float) -> float:
        """Seconds until the stores hold every acknowledged event (or `timeout_s`)."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            try:
                if self.settled():
                    break
            except psycopg.Error:
                pass  # PostgreSQL back a moment ago: asked again
            time.sleep(1.0)
        return time.monotonic() - t0

    # --- the verdict ---------------------------------------------------------------------------
    def verify(self, settle_timeout_s: float = 240) -> Verdict:
        t0 = time.monotonic()
        self.wait_settled(settle_timeout_s)
        # the analytics role catches up on its own time (a worker restarted after a fault
        # restores its tables first): its windows are judged once they equal the oracle, or
        # when the bound is spent (a row once counted 322 orders lost that the next row found)
        sales = self._verify_sales()
        while sales.lost and time.monotonic() - t0 < settle_timeout_s:
            time.sleep(1.0)
            sales = self._verify_sales()
        settled_s = time.monotonic() - t0
        orders, stock, movements, emails = self.ledger.snapshot()
        results = [
            self._verifyquery(orders),
            self._verify_stock(stock, movements),
            *self._verify_views(),
            self._verify_messages(emails),
            sales,
        ]
        return Verdict(results, settled_s)

    def _verifyquery(self, orders: dict[str, dict[str, int]]) -> StoreResult:
        status, lines = self._orders(list(orders))
        r = StoreResult("rows (PostgreSQL)", len(orders))
        missing = [o for o in orders if o not in status]
        behind = [o for o in orders if o in status and status[o] != "PROCESSING"]
        r.lost = len(missing) + len(behind)
        r.doubled = sum(max(0, lines[o] - len(items)) for o, items in orders.items())
        short = sum(1 for o, items in orders.items() if o in status and lines[o] < len(items))
        r.lost += short
        if missing:
            r.detail.append(f"{len(missing)} orders missing, e.g. {missing[:3]}")
        if behind:
            r.detail.append(
                f"{len(behind)} orders not accepted, e.g. "
                + ", ".join(f"{o} {status[o]}" for o in behind[:3])
            )
        if short:
            r.detail.append(f"{short} orders with lines missing")
        return r

    def _verify_stock(self, stock: dict[str, int], movements: Counter[str]) -> StoreResult:
        pids = list(stock)
        found = {
            str(k): int(v)
            for k, v in query(
                self.dsn, "SELECT product_id, stock FROM products WHERE product_id = ANY(%s)", pids
            )
        }
        return judge_stock(stock, movements, self._movements(pids), found)

    def _verify_sales(self) -> StoreResult:
        from datetime import datetime

        want = sales_oracle(self.ledger.sales_snapshot())
        shops = list(self.catalogue.shops)
        rows: dict[tuple[str, int], tuple[int, int, int, bool]] = {}
        for shop, start, revenue, orders, items, final in query(
            self.dsn,
            "SELECT shop_id, window_start, revenue_paise, orders, items, final "
            "FROM analytics_sales WHERE period = '1m' AND shop_id = ANY(%s)",
            shops,
        ):
            at = start if isinstance(start, datetime) else datetime.fromisoformat(str(start))
            rows[(str(shop), int(at.timestamp() * 1000))] = (
                int(revenue),
                int(orders),
                int(items),
                bool(final),
            )
        late: dict[tuple[str, int], int] = {}
        for shop, start, n in query(
            self.dsn,
            "SELECT key, window_start, count(*) FROM analytics_late WHERE aggregate = 'sales_1m' "
            "AND event_type = 'order.accepted' AND key = ANY(%s) GROUP BY 1, 2",
            shops,
        ):
            at = start if isinstance(start, datetime) else datetime.fromisoformat(str(start))
            late[(str(shop), int(at.timestamp() * 1000))] = int(n)
        r = judge_sales(want, rows, late)
        open_ = sum(1 for v in rows.values() if not v[3])
        if open_:
            r.detail.append(f"{open_} windows still open (not judged)")
        return r

    def _verify_views(self) -> list[StoreResult]:
        from streams.sync_check import run_check

        try:
            _id, reports = asyncio.run(run_check(self.settings, sample=0, wait_s=60, check_id=None))
        except Exception as exc:  # noqa: BLE001 - reported as the row's finding
            return [StoreResult("cache and search", 0, lost=1, detail=[f"check failed: {exc}"])]
        out = []
        for rep in reports:
            drift = len(rep.drift)
            r = StoreResult(
                f"{rep.store} = PostgreSQL", sum(rep.checked.values()), lost=drift, doubled=None
            )
            if drift:
                r.detail.append(f"{drift} entities differ, e.g. {rep.drift[:2]}")
            if rep.unverified:
                r.detail.append(f"{len(rep.unverified)} not verifiable (the role behind)")
            if rep.error:
                r.lost += 1
                r.detail.append(f"not checked: {rep.error}")
            out.append(r)
        return out

    def _verify_messages(self, emails: set[str]) -> StoreResult:
        got = self.mailbox.messages(self.catalogue.email)
        ours = [(subj, mid) for subj, mid in got if subj.startswith(self.catalogue.tag)]
        subjects = {subj for subj, _ in ours}
        ids = Counter(mid for _, mid in ours)
        r = StoreResult("messages (email)", len(emails), doubled=None)
        lost = emails - subjects
        r.lost = len(lost)
        r.repeats = sum(n - 1 for n in ids.values())
        if lost:
            r.detail.append(f"{len(lost)} not in the mailbox, e.g. {sorted(lost)[:3]}")
        return r


def verify(
    settings: Settings, catalogue: Catalogue, ledger: Ledger, settle_timeout_s: float = 240
) -> Verdict:
    return Verifier(settings, catalogue, ledger).verify(settle_timeout_s)
