"""``tier3 status``: the whole deployment on one screen.

What it gathers, and how cheaply:

* **broker**: whether it answers a metadata request, and with how many brokers.
* **topics**: every design topic, its partitions and its size (high minus low watermark summed
  over partitions: messages retained; on the compacted ``traces`` topic, superseded values that
  compaction has not yet removed count too).
* **groups**: the consumer groups reading this deployment's topics, with their lag.
* **training**: the latest ``TrainingRequested``, the latest training outcome
  (``TrainingCompleted`` or ``TrainingFailed``), ``EvalReport`` and ``ModelDeployed``. Those
  topics are small, so only their last ``_TAIL`` messages are read.
* **traces since the last training**: trace writes after the last request's time, counted from
  offsets (the broker's time index), so status never reads the traces topic itself. A rewrite of
  a trace counts again; that is the honest price of staying O(partitions).

Every part that cannot be read says why in ``errors`` instead of failing the whole screen; the
exception is a design topic the principal may not describe (``NotAuthorized``, exit 6), since then
"missing" and "none yet" would be claims about what it could not see.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from confluent_kafka.admin import AdminClient
from tier3.schemas import DecodeError
from tier3.schemas.registry import (
    EVAL_REPORT,
    MODEL_DEPLOYED,
    TRAINING_COMPLETED,
    TRAINING_FAILED,
    TRAINING_REQUESTED,
)
from tier3.streams.kafka import offsets
from tier3.streams.kafka.errors import UNREACHABLE, explain
from tier3.streams.kafka.events import codec_of
from tier3.streams.kafka.offsets import Range, read_ranges
from tier3.streams.kafka.settings import KafkaSettings
from tier3.streams.kafka.topics import TRACES, TRAINING_REQUESTS, TRAINING_RESULTS, expected_topics
from tier3.streams.ops.consumer_groups import ConsumerGroups

_TAIL = 1000
_TIMES = {
    TRAINING_REQUESTED: "requested_at",
    TRAINING_COMPLETED: "completed_at",
    TRAINING_FAILED: "failed_at",
    EVAL_REPORT: "created_at",
    MODEL_DEPLOYED: "deployed_at",
}


@dataclass
class TopicSize:
    name: str
    exists: bool
    partitions: int = 0
    messages: int = 0


@dataclass
class Status:
    """Everything ``tier3 status`` shows, as plain data."""

    bootstrap: str
    broker_up: bool
    brokers: int = 0
    topics: list[TopicSize] = field(default_factory=list)
    groups: list[dict[str, Any]] = field(default_factory=list)
    last_request: dict[str, Any] | None = None
    traces_since_last_request: int | None = None
    last_training: dict[str, Any] | None = None
    last_eval: dict[str, Any] | None = None
    last_deployment: dict[str, Any] | None = None
    errors: list[str] = field(default_factory=list)
    # 0, or why the broker could not be asked: 3 unreachable, 5 authentication failed, ...
    exit_code: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _latest(settings: KafkaSettings, admin: AdminClient, topic: str) -> dict[str, dict[str, Any]]:
    """The last event of each type among the topic's last ``_TAIL`` messages, with its type."""
    full = settings.topic(topic)
    parts = offsets.partitions_of(admin, full)
    marks = offsets.watermarks(admin, parts)
    ranges = [Range(t, p, max(low, high - _TAIL), high) for (t, p), (low, high) in marks.items()]
    codec = codec_of(settings)
    latest: dict[str, dict[str, Any]] = {}
    for msg in read_ranges(settings, ranges, timeout=20):
        try:
            decoded = codec.decode(msg.value())
        except DecodeError:
            continue  # the trainer dead-letters it; status only reports the good ones
        time_field = _TIMES.get(decoded.name)
        record = {"event": decoded.name, **decoded.record}
        held = latest.get(decoded.name)
        if held is None or (time_field and record[time_field] >= held[time_field]):
            latest[decoded.name] = record
    return latest


def _summary(record: dict[str, Any] | None, *fields: str) -> dict[str, Any] | None:
    if record is None:
        return None
    return {k: record[k] for k in ("event", *fields) if k in record}


def _traces_since(admin: AdminClient, settings: KafkaSettings, since_ms: int | None) -> int:
    parts = offsets.partitions_of(admin, settings.topic(TRACES))
    marks = offsets.watermarks(admin, parts)
    if since_ms is None:
        return sum(high - low for low, high in marks.values())
    found = offsets.offsets_for_time(admin, parts, since_ms)
    return sum(high - (found[p] if found[p] >= 0 else high) for p, (_, high) in marks.items())


def collect(settings: KafkaSettings, admin: AdminClient | None = None) -> Status:
    """Gather the status of the deployment ``settings`` points at."""
    status = Status(settings.bootstrap_servers, broker_up=False)
    try:
        admin = admin or AdminClient({**settings.client_config(), "log_level": 0})
        metadata = admin.list_topics(timeout=5)
    except Exception as exc:
        problem = explain(exc, settings)
        status.exit_code = problem.exit_code if problem is not None else UNREACHABLE
        status.errors.append(f"broker: {problem or exc}")
        return status
    status.broker_up, status.brokers = True, len(metadata.brokers)
    # A design topic the principal may not describe raises NotAuthorized: the whole screen
    # would otherwise read "missing" and "none yet" where it could not look.
    names = [settings.topic(spec.name) for spec in expected_topics(settings)]
    existing = offsets.existing_topics(admin, names)
    for full in names:
        if full not in existing:
            status.topics.append(TopicSize(full, exists=False))
            continue
        parts = [(full, p) for p in sorted(existing[full].partitions)]
        try:
            marks = offsets.watermarks(admin, parts)
        except offsets.OffsetLookupError as exc:
            status.errors.append(f"topic {full}: {exc}")
            marks = {}
        size = sum(high - low for low, high in marks.values())
        status.topics.append(TopicSize(full, True, len(parts), size))
    try:
        status.groups = [s.__dict__ for s in ConsumerGroups(settings, admin).list()]
    except Exception as exc:
        status.errors.append(f"groups: {exc}")
    try:
        requests = _latest(settings, admin, TRAINING_REQUESTS)
        results = _latest(settings, admin, TRAINING_RESULTS)
    except Exception as exc:
        status.errors.append(f"training: {exc}")
        return status
    request = requests.get(TRAINING_REQUESTED)
    status.last_request = _summary(
        request, "request_id", "model", "requested_at", "trigger", "trace_count"
    )
    outcomes = [r for r in (results.get(TRAINING_COMPLETED), results.get(TRAINING_FAILED)) if r]
    training = max(
        outcomes, key=lambda r: r.get("completed_at", r.get("failed_at", 0)), default=None
    )
    status.last_training = _summary(
        training,
        "request_id",
        "model",
        "completed_at",
        "failed_at",
        "train_examples",
        "eval_examples",
        "metrics",
        "stage",
        "reason",
    )
    status.last_eval = _summary(
        results.get(EVAL_REPORT),
        "request_id",
        "model",
        "created_at",
        "passed",
        "examples",
        "json_validity_rate",
        "selection_agreement",
        "report_uri",
    )
    status.last_deployment = _summary(
        results.get(MODEL_DEPLOYED),
        "request_id",
        "model",
        "ollama_name",
        "action",
        "deployed_at",
        "quantization",
    )
    try:
        since = request["requested_at"] if request else None
        status.traces_since_last_request = _traces_since(admin, settings, since)
    except Exception as exc:
        status.errors.append(f"traces: {exc}")
    return status
