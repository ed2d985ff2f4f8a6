"""Encode and decode tier3 events.

Two framings, one interface:

* ``SingleObjectCodec`` (the default): Avro single-object encoding, as the Avro specification
  defines it: the two magic bytes ``C3 01``, the writer schema's 8-byte CRC-64-AVRO fingerprint
  (little-endian), then the Avro binary body. No registry server is needed: the reader finds the
  writer's schema by fingerprint among the versions this package ships and resolves it to the
  current version.
* ``ConfluentCodec``: Confluent Schema Registry framing (``00`` + 4-byte schema id, big-endian),
  for sites that run a registry. Schemas are registered under their record's full name
  (RecordNameStrategy), because one topic (training-results) carries several event types.

Any payload that cannot be decoded raises ``DecodeError``, whose message says why.
"""

from __future__ import annotations

import io
import json
import struct
from dataclasses import dataclass
from typing import Any, Protocol

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from tier3.schemas import registry

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
CONFLUENT_MAGIC = b"\x00"

Record = dict[str, Any]


class DecodeError(ValueError):
    """A payload that is not a valid tier3 event. The message says why."""


class EncodeError(ValueError):
    """A record that does not fit its schema."""


@dataclass(frozen=True, slots=True)
class Decoded:
    """A decoded event: its type (the record's name) and its fields, in the current schema."""

    name: str
    record: Record


class Codec(Protocol):
    def encode(self, name: str, record: Record) -> bytes: ...

    def decode(
        self, data: bytes | None, expect: str | tuple[str, ...] | None = None
    ) -> Decoded: ...


def _write_body(schema: dict[str, Any], name: str, record: Record) -> bytes:
    buf = io.BytesIO()
    try:
        schemaless_writer(buf, schema, record)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise EncodeError(f"{name} record does not fit its schema: {exc}") from exc
    return buf.getvalue()


def _read_body(
    body: memoryview, writer: dict[str, Any], reader: dict[str, Any], what: str
) -> Record:
    buf = io.BytesIO(body)
    # No reader schema when the writer's is the current one: fastavro would compare the two
    # (a deep dict comparison, ~40% of a decode, measured in bench/RESULTS.md) to find no change.
    reader_schema = None if reader is writer else reader
    try:
        record = schemaless_reader(buf, writer, reader_schema)
    except Exception as exc:  # fastavro raises many types on corrupt input; all mean one thing here
        raise DecodeError(f"{what}: body does not decode: {type(exc).__name__}: {exc}") from exc
    if buf.tell() != len(body):
        raise DecodeError(f"{what}: {len(body) - buf.tell()} trailing bytes after the record")
    return record


def _check_expected(name: str, expect: str | tuple[str, ...] | None) -> None:
    if expect is None:
        return
    allowed = (expect,) if isinstance(expect, str) else expect
    if name not in allowed:
        raise DecodeError(f"expected {' or '.join(allowed)}, got a {name} event")


class SingleObjectCodec:
    """Avro single-object encoding; writer schemas found by fingerprint. Thread-safe."""

    def __init__(self) -> None:
        self._writers = {name: registry.current(name) for name in registry.EVENT_NAMES}
        self._headers = {
            name: SINGLE_OBJECT_MAGIC + v.fingerprint for name, v in self._writers.items()
        }

    def encode(self, name: str, record: Record) -> bytes:
        try:
            writer = self._writers[name]
        except KeyError:
            raise EncodeError(f"unknown event type {name!r}") from None
        return self._headers[name] + _write_body(writer.parsed, name, record)

    def decode(self, data: bytes | None, expect: str | tuple[str, ...] | None = None) -> Decoded:
        if data is None:
            raise DecodeError("empty payload (null value): not an event")
        if len(data) < 10:
            raise DecodeError(f"payload of {len(data)} bytes is shorter than the 10-byte header")
        if data[:2] != SINGLE_OBJECT_MAGIC:
            raise DecodeError(
                f"not Avro single-object encoding: magic bytes {data[:2].hex()} instead of c301"
            )
        fp = bytes(data[2:10])
        writer = registry.by_fingerprint().get(fp)
        if writer is None:
            raise DecodeError(f"unknown writer schema fingerprint {fp[::-1].hex()}")
        _check_expected(writer.name, expect)
        reader = registry.current(writer.name)
        what = f"{writer.name} (schema version {writer.version})"
        record = _read_body(memoryview(data)[10:], writer.parsed, reader.parsed, what)
        return Decoded(writer.name, record)


class ConfluentCodec:
    """Confluent Schema Registry framing, through confluent-kafka's registry client."""

    def __init__(self, registry_url: str, client: Any | None = None) -> None:
        from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

        # new_client gives the library's in-memory registry for mock:// URLs (tests, dry runs).
        self._client = client or SchemaRegistryClient.new_client({"url": registry_url})
        self._schema_type = Schema
        self._ids: dict[str, int] = {}
        self._writers_by_id: dict[int, tuple[str, dict[str, Any]]] = {}

    def _schema_id(self, name: str) -> int:
        schema_id = self._ids.get(name)
        if schema_id is None:
            version = registry.current(name)
            schema = self._schema_type(json.dumps(version.raw), "AVRO")
            schema_id = self._client.register_schema(version.fullname, schema)
            self._ids[name] = schema_id
        return schema_id

    def encode(self, name: str, record: Record) -> bytes:
        if name not in registry.EVENT_NAMES:
            raise EncodeError(f"unknown event type {name!r}")
        header = CONFLUENT_MAGIC + struct.pack(">I", self._schema_id(name))
        return header + _write_body(registry.current(name).parsed, name, record)

    def _writer(self, schema_id: int) -> tuple[str, dict[str, Any]]:
        found = self._writers_by_id.get(schema_id)
        if found is None:
            try:
                schema = self._client.get_schema(schema_id)
            except Exception as exc:
                raise DecodeError(f"schema id {schema_id} unknown to the registry: {exc}") from exc
            raw = json.loads(schema.schema_str)
            found = (raw["name"].rsplit(".", 1)[-1], parse_schema(raw))
            self._writers_by_id[schema_id] = found
        return found

    def decode(self, data: bytes | None, expect: str | tuple[str, ...] | None = None) -> Decoded:
        if data is None:
            raise DecodeError("empty payload (null value): not an event")
        if len(data) < 5 or data[:1] != CONFLUENT_MAGIC:
            raise DecodeError("not Confluent framing: no 00 magic byte and 4-byte schema id")
        (schema_id,) = struct.unpack(">I", data[1:5])
        name, writer = self._writer(schema_id)
        if name not in registry.EVENT_NAMES:
            raise DecodeError(f"schema id {schema_id} is a {name}, not a tier3 event")
        _check_expected(name, expect)
        what = f"{name} (registry id {schema_id})"
        record = _read_body(memoryview(data)[5:], writer, registry.current(name).parsed, what)
        return Decoded(name, record)


def codec_for(framing: str = "single-object", registry_url: str | None = None) -> Codec:
    """The codec a deployment is configured for (``TIER3_FRAMING``)."""
    if framing == "single-object":
        return SingleObjectCodec()
    if framing == "confluent":
        if not registry_url:
            raise ValueError("confluent framing needs TIER3_SCHEMA_REGISTRY_URL")
        return ConfluentCodec(registry_url)
    raise ValueError(f"unknown framing {framing!r}: use 'single-object' or 'confluent'")
