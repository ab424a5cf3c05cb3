"""The generated check-and-write path agrees with the full validator and encoder: same bytes for
valid data, and it never accepts what the validator refuses (mutation-tested, fixed seed)."""

from __future__ import annotations

import copy
import random
from typing import Any

import pytest

from schemas.catalog import EVENT_TYPES
from schemas.encoder import compile_encoder
from schemas.fastpath import Reject, compile_fast
from schemas.validate import Validator


def _parts(name: str) -> tuple[Validator, Any, Any]:
    event = EVENT_TYPES[name]
    ds = next(f["type"] for f in event.schema["fields"] if f["name"] == "data")
    ds = {**ds, "namespace": event.schema["namespace"]}
    return Validator(ds), compile_fast(ds), compile_encoder(ds)


def _slow_bytes(validator: Validator, encoder: Any, value: Any) -> bytes | None:
    datum, errors = validator.convert(value)
    return None if errors else bytes(encoder(datum, b""))


def _fast_bytes(fast: Any, value: Any) -> bytes | None:
    buf = bytearray()
    try:
        fast(buf, value)
    except Exception:  # noqa: BLE001 - Reject or a type error on odd input: both mean "slow path"
        return None
    return bytes(buf)


@pytest.mark.parametrize("name", sorted(EVENT_TYPES))
def test_examples_encode_identically(name: str) -> None:
    validator, fast, encoder = _parts(name)
    example = EVENT_TYPES[name].example
    assert _fast_bytes(fast, example) == _slow_bytes(validator, encoder, example) is not None


_ODD = [
    None,
    "",
    "x",
    -1,
    0,
    1,
    2**40,
    2**70,
    1.5,
    2.0,
    True,
    [],
    {},
    [1],
    {"a": 1},
    "2026-11-23T10:00:00",
    "2026-11-23T10:00:00Z",
    "not-a-date",
    "A" * 300,
]


def _mutations(value: Any, rng: random.Random) -> Any:
    """A copy of `value` with one random leaf replaced, deleted, or a key added."""
    out = copy.deepcopy(value)
    node, path = out, []
    while True:
        if isinstance(node, dict) and node and rng.random() < 0.7:
            k = rng.choice(list(node))
            path.append((node, k))
            node = node[k]
        elif isinstance(node, list) and node and rng.random() < 0.7:
            i = rng.randrange(len(node))
            path.append((node, i))
            node = node[i]
        else:
            break
    if not path:
        return out
    parent, k = path[-1]
    action = rng.random()
    if action < 0.6:
        parent[k] = rng.choice(_ODD)
    elif action < 0.8 and isinstance(parent, dict):
        del parent[k]
    elif isinstance(parent, dict):
        parent["zz_unknown"] = 1
    return out


@pytest.mark.parametrize("name", sorted(EVENT_TYPES))
def test_never_accepts_what_the_validator_refuses(name: str) -> None:
    validator, fast, encoder = _parts(name)
    rng = random.Random(f"{name}-2026")
    example = EVENT_TYPES[name].example
    for _ in range(300):
        value = _mutations(example, rng)
        fast_out = _fast_bytes(fast, value)
        if fast_out is not None:
            assert fast_out == _slow_bytes(validator, encoder, value), value


def test_reject_is_raised_for_a_missing_key_field() -> None:
    _, fast, _ = _parts("order.created")
    value = dict(EVENT_TYPES["order.created"].example)
    del value["order_id"]
    with pytest.raises(Reject):
        fast(bytearray(), value)
