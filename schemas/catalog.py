"""Topics, keys and event types: the one place they are defined.

Every event type has:
- an Avro schema, `schemas/avro/<category>/<name>.avsc`: a record whose fields are the envelope
  (`id`, `type`, `occurred_at`, `source`, `trace_id`) and `data`, the typed payload;
- a topic (one per category), and the field of `data` whose value is the record key (the entity
  whose order matters), sent as a plain UTF-8 string;
- `postable`: False for the events the workers derive (clients may not post them);
- an example `data`, valid against the schema (`schemas/examples/<type>.json`).

Several types share a topic; their subjects follow the TopicRecordName strategy:
`<topic>-<record full name>`.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from core.settings import get_settings

__all__ = [
    "ENVELOPE_FIELDS",
    "EVENT_TYPES",
    "TOPICS",
    "EventType",
    "Topic",
    "event_type",
    "load_schema",
    "record_defaults",
    "subject_for",
    "topics_in",
]

SCHEMA_DIR = Path(__file__).resolve().parent / "avro"
EXAMPLE_DIR = Path(__file__).resolve().parent / "examples"

#: The fields every event carries, in this order, before `data`.
ENVELOPE_FIELDS: tuple[str, ...] = ("id", "type", "occurred_at", "source", "trace_id")


@dataclass(frozen=True)
class Topic:
    """A Kafka topic of one event category, created with the settings that make replay exact."""

    category: str
    name: str
    partitions: int
    key: str  # what the key is, for people ("order id")
    config: dict[str, str] = field(
        default_factory=lambda: {
            "retention.ms": "-1",  # the log is the source of truth: keep every event
            "cleanup.policy": "delete",
            # min.insync.replicas: set where the topic is created (connectors.topics), from the
            # settings, like its replication factor
            "message.timestamp.type": "CreateTime",  # producers set it from occurred_at
        }
    )


@dataclass(frozen=True)
class EventType:
    """One event type: its topic, its key field, its schema, whether clients may post it."""

    name: str  # "order.created"
    category: str  # "order"
    key_field: str  # field of `data` holding the record key
    postable: bool
    schema_file: str  # relative to SCHEMA_DIR
    description: str

    @property
    def topic(self) -> Topic:
        return TOPICS[self.category]

    @property
    def schema(self) -> dict[str, Any]:
        return load_schema(self.schema_file)

    @property
    def record_name(self) -> str:
        s = self.schema
        return f"{s['namespace']}.{s['name']}" if "namespace" in s else str(s["name"])

    @property
    def subject(self) -> str:
        return subject_for(self.topic.name, self.record_name)

    @property
    def example(self) -> dict[str, Any]:
        return _example(self.name)

    def defaults(self, path: str) -> dict[str, Any]:
        """See `record_defaults`."""
        return record_defaults(self.name, path)


def subject_for(topic: str, record_name: str) -> str:
    """The TopicRecordName strategy's subject."""
    return f"{topic}-{record_name}"


@cache
def load_schema(schema_file: str) -> dict[str, Any]:
    return json.loads((SCHEMA_DIR / schema_file).read_text())  # type: ignore[no-any-return]


@cache
def _example(name: str) -> dict[str, Any]:
    return json.loads((EXAMPLE_DIR / f"{name}.json").read_text())  # type: ignore[no-any-return]


def topics_in(namespace: str) -> dict[str, Topic]:
    """The event topics, named `<namespace>.<category>.events`."""
    return {
        t.category: t
        for t in (
            Topic("user", f"{namespace}.user.events", 6, "user id"),
            Topic("shop", f"{namespace}.shop.events", 3, "shop id"),
            Topic("shopkeeper", f"{namespace}.shopkeeper.events", 3, "shop id"),
            Topic("product", f"{namespace}.product.events", 6, "product id"),
            Topic("order", f"{namespace}.order.events", 6, "order id"),
            Topic("notification", f"{namespace}.notification.events", 3, "user id"),
            Topic("analytics", f"{namespace}.analytics.events", 6, "session id"),
            Topic("search", f"{namespace}.search.events", 1, "collection name"),
            Topic("cleanup", f"{namespace}.cleanup.events", 1, "job name"),
            Topic("ops", f"{namespace}.ops.events", 1, "entity id"),
        )
    }


class _Topics(Mapping[str, Topic]):
    """The event topics of this process's namespace, by category. The namespace is read from the
    settings on first use, not at import, and kept for the life of the process."""

    def __init__(self) -> None:
        self._topics: dict[str, Topic] | None = None

    def _resolved(self) -> dict[str, Topic]:
        if self._topics is None:
            # two threads racing here compute equal dicts: no lock needed
            self._topics = topics_in(get_settings().topic_namespace)
        return self._topics

    def __getitem__(self, category: str) -> Topic:
        return self._resolved()[category]

    def __iter__(self) -> Iterator[str]:
        return iter(self._resolved())

    def __len__(self) -> int:
        return len(self._resolved())

    def __repr__(self) -> str:
        # never resolves: printing it must not read the settings
        return f"TOPICS({'<unresolved>' if self._topics is None else repr(self._topics)})"


#: The event topics of this process's namespace (TOPIC_NAMESPACE, "mohallamart" by default).
TOPICS: Mapping[str, Topic] = _Topics()

# (type, key field of data, postable, description). The schema file is
# avro/<category>/<name with dots after the category turned to underscores>.avsc
_EVENTS: tuple[tuple[str, str, bool, str], ...] = (
    # user
    ("user.registered", "user_id", True, "A user signed up (welcome email, default preferences)"),
    ("user.updated", "user_id", True, "A user's whole profile after a change"),
    ("user.deleted", "user_id", True, "A user's account was deleted; the user stays deleted"),
    ("user.preferences_changed", "user_id", True, "A user's complete preferences after a change"),
    ("user.signed_in", "user_id", True, "A user signed in: a session began"),
    ("user.signed_out", "user_id", True, "A session ended (sign-out or revocation)"),
    # shop
    ("shop.created", "shop_id", True, "Shop created (listed once its shopkeeper is approved)"),
    ("shop.updated", "shop_id", True, "A shop's whole details after a change"),
    # shopkeeper
    ("shopkeeper.applied", "shop_id", True, "A shopkeeper applied to sell with a shop"),
    ("shopkeeper.approved", "shop_id", True, "An application was approved: the shop is enabled"),
    ("shopkeeper.rejected", "shop_id", True, "An application was rejected"),
    # product
    ("product.created", "product_id", True, "A product added, in Draft, with its initial stock"),
    ("product.updated", "product_id", True, "A product's whole details and price after a change"),
    ("product.published", "product_id", True, "Draft -> Published: listed and searchable"),
    ("product.archived", "product_id", True, "Published -> Archived: out of listings and search"),
    ("product.moved_to_draft", "product_id", True, "Published | Archived -> Draft"),
    ("product.stock_set", "product_id", True, "A product's stock set to an absolute quantity"),
    ("product.stock_adjusted", "product_id", True, "A product's stock changed by a delta"),
    ("product.stock_changed", "product_id", False, "Derived: one inventory movement and new stock"),
    ("product.out_of_stock", "product_id", False, "Derived: a product's stock reached zero"),
    ("product.back_in_stock", "product_id", False, "Derived: a product's stock rose from zero"),
    (
        "product.stock_alert_requested",
        "product_id",
        True,
        "A user asks to be told when the product is back in stock",
    ),
    # order
    ("order.created", "order_id", True, "A customer placed an order with one shop (Pending)"),
    ("order.status_changed", "order_id", True, "A shop moved an order (Processing -> Completed)"),
    ("order.cancelled", "order_id", True, "Pending | Processing -> Cancelled; stock returned"),
    ("order.refunded", "order_id", True, "Completed -> Refunded; returned items back in stock"),
    ("order.accepted", "order_id", False, "Derived: every item reserved (Pending -> Processing)"),
    ("order.rejected", "order_id", False, "Derived: the order could not be reserved (Rejected)"),
    # notification
    ("notification.requested", "user_id", True, "Send a user a notification on some channels"),
    # analytics
    ("analytics.tracked", "session_id", True, "A user interaction: page view, search, cart..."),
    # search
    ("search.reindex_requested", "collection", True, "Rebuild a search collection (or part)"),
    # cleanup
    ("cleanup.expired_sessions", "job", True, "Daily: remove sessions expired before the cutoff"),
    ("cleanup.old_logs", "job", True, "Weekly: delete log rows older than the cutoff"),
    # ops
    (
        "ops.drift_detected",
        "entity_id",
        False,
        "Derived: a store disagreed with PostgreSQL after its role caught up (data-sync check)",
    ),
)


def _schema_file(name: str) -> str:
    category, _, rest = name.partition(".")
    return f"{category}/{rest.replace('.', '_')}.avsc"


EVENT_TYPES: dict[str, EventType] = {
    name: EventType(
        name=name,
        category=name.split(".", 1)[0],
        key_field=key,
        postable=postable,
        schema_file=_schema_file(name),
        description=description,
    )
    for name, key, postable, description in _EVENTS
}


def event_type(name: str) -> EventType | None:
    return EVENT_TYPES.get(name)


def record_defaults(type_: str, path: str) -> dict[str, Any]:
    """The documented defaults of the (optional) record at `path` of `type_`'s data, e.g.
    ("user.registered", "preferences"): each of its fields that has a default, with it. What a
    reader stores when a client left the whole record out (Avro fills the defaults of missing
    fields, not those inside a record given as null). A fresh dict every call."""
    return copy.deepcopy(_record_defaults(type_, path))


@cache
def _record_defaults(type_: str, path: str) -> dict[str, Any]:
    node: Any = next(f for f in EVENT_TYPES[type_].schema["fields"] if f["name"] == "data")
    for name in path.split("."):
        record = _record_of(node["type"])
        node = next(f for f in record["fields"] if f["name"] == name)
    record = _record_of(node["type"])
    return {f["name"]: f["default"] for f in record["fields"] if "default" in f}


def _record_of(avro_type: Any) -> dict[str, Any]:
    """The record branch of a field's type (the type itself, or the record of a union)."""
    if isinstance(avro_type, dict) and avro_type.get("type") == "record":
        return avro_type
    if isinstance(avro_type, list):
        for branch in avro_type:
            if isinstance(branch, dict) and branch.get("type") == "record":
                return branch
    raise KeyError(f"not a record type: {avro_type!r}")
