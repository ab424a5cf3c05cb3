"""The event contract: Avro schemas, topics and keys, the codec and the registry client."""

__all__: list[str] = []
