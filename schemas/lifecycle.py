"""The state machines of orders, products and shopkeeper applications.

A transition not in these tables never touches the row: the projections dead-letter the event
with the reason. `None` as a from-state means "the entity does not exist yet".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "ORDER_STATUS_AFTER",
    "ORDER_TRANSITIONS",
    "PRODUCT_TRANSITIONS",
    "SHOPKEEPER_TRANSITIONS",
    "transition",
]

# (event type, from state) -> to state
ORDER_TRANSITIONS: Mapping[tuple[str, str | None], str] = {
    ("order.created", None): "PENDING",
    ("order.accepted", "PENDING"): "PROCESSING",
    ("order.rejected", "PENDING"): "REJECTED",
    ("order.cancelled", "PENDING"): "CANCELLED",
    ("order.cancelled", "PROCESSING"): "CANCELLED",
    ("order.status_changed:COMPLETED", "PROCESSING"): "COMPLETED",
    ("order.refunded", "COMPLETED"): "REFUNDED",
}


def _state_after(table: Mapping[tuple[str, str | None], str]) -> dict[str, str]:
    """event type -> the state it leads to, for the events that lead to one state whatever the
    state before (a status change is named by its target: it is left out)."""
    targets: dict[str, set[str]] = {}
    for (name, _before), to in table.items():
        if ":" not in name:
            targets.setdefault(name, set()).add(to)
    return {name: to.pop() for name, to in targets.items() if len(to) == 1}


#: order event type -> the order's status after it (`order.status_changed` names its own)
ORDER_STATUS_AFTER: Mapping[str, str] = _state_after(ORDER_TRANSITIONS)

PRODUCT_TRANSITIONS: Mapping[tuple[str, str | None], str] = {
    ("product.created", None): "DRAFT",
    ("product.published", "DRAFT"): "PUBLISHED",
    ("product.archived", "PUBLISHED"): "ARCHIVED",
    ("product.moved_to_draft", "PUBLISHED"): "DRAFT",
    ("product.moved_to_draft", "ARCHIVED"): "DRAFT",
}

SHOPKEEPER_TRANSITIONS: Mapping[tuple[str, str | None], str] = {
    ("shopkeeper.applied", None): "PENDING",
    ("shopkeeper.applied", "REJECTED"): "PENDING",  # may apply again after a rejection
    ("shopkeeper.approved", "PENDING"): "APPROVED",
    ("shopkeeper.rejected", "PENDING"): "REJECTED",
}


def transition_key(event: Mapping[str, Any]) -> str:
    """The event's name in the tables (a status change is named by its target)."""
    if event["type"] == "order.status_changed":
        return f"order.status_changed:{event['data']['to_status']}"
    return str(event["type"])


def transition(
    table: Mapping[tuple[str, str | None], str], event: Mapping[str, Any], current: str | None
) -> str:
    """The state after `event`, or ValueError naming the illegal transition."""
    name = transition_key(event)
    to = table.get((name, current))
    if to is None:
        allowed = sorted(str(f) for (e, f) in table if e == name)
        have = "does not exist" if current is None else f"is {current}"
        raise ValueError(
            f"{name} is not allowed when the entity {have} "
            f"(allowed from: {', '.join(allowed) or 'nothing'})"
        )
    return to
