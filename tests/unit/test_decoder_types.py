"""A stage that handles some event types passes over the others by their writer's schema id,
without decoding them (the stock role's router reads every product and order event and routes
a third of them)."""

from __future__ import annotations

from schemas.catalog import EVENT_TYPES
from schemas.codec import RegistryDecoder, frame

SCHEMAS = {1: EVENT_TYPES["product.created"].schema, 2: EVENT_TYPES["product.published"].schema}


def test_the_type_of_a_schema_id_is_known_without_decoding() -> None:
    fetched: list[int] = []

    def fetch(sid: int) -> dict[str, object]:
        fetched.append(sid)
        return SCHEMAS[sid]

    decoder = RegistryDecoder(fetch)
    for sid in SCHEMAS:
        decoder.load(sid)
    assert decoder.type_of(1) == "product.created"
    assert decoder.type_of(2) == "product.published"
    assert decoder.type_of(3) is None  # not loaded: unknown, decode it as before
    assert decoder.schema_id(frame(2, b"garbage")) == 2  # the id alone, the body never read
    assert fetched == [1, 2]


def test_a_schema_outside_the_catalogue_has_no_type() -> None:
    decoder = RegistryDecoder(
        lambda sid: {"type": "record", "name": "Other", "namespace": "x", "fields": []}
    )
    decoder.load(7)
    assert decoder.type_of(7) is None
