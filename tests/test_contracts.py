"""The Avro contracts: every event encodes, travels through Kafka and decodes to what was sent;
bad payloads give one clear exception; today's schemas read what every released version wrote."""

from __future__ import annotations

import io
import json

import pytest
from fastavro import schemaless_writer
from tier3.schemas import DecodeError, EncodeError, SingleObjectCodec, registry
from tier3.schemas.codec import SINGLE_OBJECT_MAGIC, ConfluentCodec
from tier3.streams.kafka.events import EventProducer
from tier3.streams.kafka.settings import KafkaSettings
from tier3.streams.kafka.topics import TRAINING_RESULTS

from tests.support.kafka_reading import read_all
from tests.support.samples import SAMPLES

codec = SingleObjectCodec()


def test_every_event_type_has_a_sample_and_documented_fields() -> None:
    assert set(SAMPLES) == set(registry.EVENT_NAMES)
    for name in registry.EVENT_NAMES:
        schema = registry.current(name).raw
        assert schema.get("doc"), name
        undocumented = [f["name"] for f in schema["fields"] if not f.get("doc")]
        assert undocumented == [], f"{name} fields without doc: {undocumented}"


@pytest.mark.parametrize("name", registry.EVENT_NAMES)
def test_single_object_frame_is_the_avro_spec(name: str) -> None:
    data = codec.encode(name, SAMPLES[name])
    assert data[:2] == SINGLE_OBJECT_MAGIC
    assert data[2:10] == registry.current(name).fingerprint
    decoded = codec.decode(data)
    assert decoded.name == name
    assert decoded.record == SAMPLES[name]


def test_every_event_type_round_trips_through_the_broker(kafka: KafkaSettings) -> None:
    producer = EventProducer(kafka)
    for name, record in SAMPLES.items():
        producer.send(TRAINING_RESULTS, name, "key-" + name, record)
    assert producer.flush(10) == 0
    got = {}
    for msg in read_all(kafka, TRAINING_RESULTS):
        decoded = codec.decode(msg.value)
        got[decoded.name] = (msg.key, decoded.record)
    assert got == {name: ("key-" + name, record) for name, record in SAMPLES.items()}


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (None, "empty payload"),
        (b"\xc3\x01", "shorter than the 10-byte header"),
        (b'{"query_id": "q"}xxxxxxxx', "not Avro single-object encoding"),
        (b"\xc3\x01" + b"\x00" * 8 + b"\x02", "unknown writer schema fingerprint"),
        (codec.encode("Feedback", SAMPLES["Feedback"])[:12], "body does not decode"),
        (codec.encode("Feedback", SAMPLES["Feedback"]) + b"\x00", "trailing bytes"),
    ],
)
def test_undecodable_payload_raises_one_clear_error(payload: bytes | None, why: str) -> None:
    with pytest.raises(DecodeError, match=why):
        codec.decode(payload)


def test_decode_can_insist_on_the_expected_event_type() -> None:
    data = codec.encode("Feedback", SAMPLES["Feedback"])
    with pytest.raises(DecodeError, match="expected Experience, got a Feedback"):
        codec.decode(data, expect="Experience")


def test_a_record_that_breaks_its_schema_is_refused_at_encode() -> None:
    with pytest.raises(EncodeError, match="Feedback"):
        codec.encode("Feedback", {**SAMPLES["Feedback"], "rating": "five"})


def _write_with(version: registry.SchemaVersion, record: dict) -> bytes:
    buf = io.BytesIO()
    fields = {f["name"] for f in version.raw["fields"]}
    schemaless_writer(buf, version.parsed, {k: v for k, v in record.items() if k in fields})
    return SINGLE_OBJECT_MAGIC + version.fingerprint + buf.getvalue()


@pytest.mark.parametrize("name", registry.EVENT_NAMES)
def test_current_schema_reads_every_released_version(name: str) -> None:
    versions = registry.history(name)
    assert versions, f"{name} has no released version kept as a fixture"
    current = registry.current(name)
    defaults = {f["name"]: f["default"] for f in current.raw["fields"] if "default" in f}
    for old in versions:
        decoded = codec.decode(_write_with(old, SAMPLES[name]))
        old_fields = {f["name"] for f in old.raw["fields"]}
        expected = {k: (v if k in old_fields else defaults[k]) for k, v in SAMPLES[name].items()}
        assert decoded.record == expected, f"{name} v{old.version}"


@pytest.mark.parametrize("name", registry.EVENT_NAMES)
def test_fields_added_since_a_release_have_defaults(name: str) -> None:
    current = {f["name"]: f for f in registry.current(name).raw["fields"]}
    for old in registry.history(name):
        added = set(current) - {f["name"] for f in old.raw["fields"]}
        missing_default = sorted(a for a in added if "default" not in current[a])
        assert missing_default == [], f"{name}: new fields without default since v{old.version}"


def test_evolution_fixtures_differ_from_current_where_fields_were_added() -> None:
    # Proof the evolution test exercises resolution, not only identical schemas.
    old = registry.history("Experience")[0]
    assert old.fingerprint != registry.current("Experience").fingerprint
    assert "model_variant" not in json.dumps(old.raw["fields"])


def test_trace_versions_1_and_2_read_as_traces_without_messages() -> None:
    # Version 3 added the messages the teacher was sent; older traces read with none ([]), so
    # the dataset knows to render them with the task (tests/test_tasks.py).
    versions = {v.version: v for v in registry.history("Trace")}
    assert {"1", "2"} <= set(versions)
    assert "student_error" not in json.dumps(versions["1"].raw)
    assert "student_error" in json.dumps(versions["2"].raw)
    for version in ("1", "2"):
        old = versions[version]
        assert "teacher_messages" not in json.dumps(old.raw)
        assert old.fingerprint != registry.current("Trace").fingerprint
        record = codec.decode(_write_with(old, SAMPLES["Trace"]), expect="Trace").record
        assert record["teacher_messages"] == [], version
        assert record["teacher_answer"] == SAMPLES["Trace"]["teacher_answer"]
    current = codec.decode(codec.encode("Trace", SAMPLES["Trace"])).record
    assert current["teacher_messages"] == SAMPLES["Trace"]["teacher_messages"]


def test_confluent_framing_round_trips_through_a_registry() -> None:
    # The library's in-memory registry: it speaks the same client API as a registry server.
    confluent = ConfluentCodec("mock://tier3-test")
    for name, record in SAMPLES.items():
        data = confluent.encode(name, record)
        assert data[0] == 0
        assert confluent.decode(data, expect=name).record == record
    with pytest.raises(DecodeError, match="not Confluent framing"):
        confluent.decode(codec.encode("Feedback", SAMPLES["Feedback"]))
