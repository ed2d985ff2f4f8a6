"""The topics of the design: their names, keys, configuration, and their creation and check.

``experiences`` and ``feedback`` have the same partition count so that a query's two events meet
in one sampler task. ``traces`` is compacted: the latest trace per query_id survives, and a
tombstone deletes one. Every topic a consumer reads has a ``.dlq`` dead-letter topic.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, ResourceType
from tier3.streams.kafka.offsets import existing_topics
from tier3.streams.kafka.settings import KafkaSettings

EXPERIENCES = "experiences"
FEEDBACK = "feedback"
CAPTURE_JOBS = "capture-jobs"
TRACES = "traces"
TRAINING_REQUESTS = "training-requests"
TRAINING_RESULTS = "training-results"
COUNTER_NEW_TRACES = "counter.new-traces"  # the counter's internal repartition topic

# The student's logical name when none is configured (TIER3_STUDENT_MODEL): the key of its
# records on training-requests and training-results (requests, results, deployments). Stated
# here once; every settings class that names the student (counter, router, trainer, release)
# takes its default from this.
STUDENT_MODEL = "cc-widget-selector"

DLQ_SUFFIX = ".dlq"
_DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class TopicSpec:
    """What one topic should look like on the broker."""

    name: str  # without prefix
    partitions: int
    config: dict[str, str] = field(default_factory=dict)
    purpose: str = ""


def expected_topics(settings: KafkaSettings) -> list[TopicSpec]:
    """Every topic tier3 uses, with the configuration it must have."""
    p = settings.partitions
    long_retention = {"cleanup.policy": "delete", "retention.ms": str(90 * _DAY_MS)}
    normal = {"cleanup.policy": "delete", "retention.ms": str(14 * _DAY_MS)}
    base = [
        TopicSpec(EXPERIENCES, p, long_retention, "backend answers (replay source)"),
        TopicSpec(FEEDBACK, p, long_retention, "user ratings, co-partitioned with experiences"),
        TopicSpec(CAPTURE_JOBS, p, normal, "sampled queries for the capture consumers"),
        TopicSpec(
            TRACES,
            p,
            {
                "cleanup.policy": "compact",
                "min.compaction.lag.ms": "0",
                "delete.retention.ms": str(_DAY_MS),
            },
            "teacher and student traces, latest per query_id",
        ),
        TopicSpec(TRAINING_REQUESTS, 1, normal, "requests to fine-tune the student"),
        TopicSpec(TRAINING_RESULTS, 1, long_retention, "training, evaluation and deployments"),
    ]
    dead_letters = [
        TopicSpec(t.name + DLQ_SUFFIX, 1, long_retention, f"dead letters of {t.name}") for t in base
    ]
    # Created here, with the rest, rather than by Faust when the counter starts: a worker whose
    # group forms before its internal topic exists leaves that topic out of the assignment and
    # never reads it (seen after a broker restart: zero training requests).
    internal = [
        TopicSpec(
            COUNTER_NEW_TRACES, 1, {"cleanup.policy": "delete", "retention.ms": str(7 * _DAY_MS)},
            "the counter's new traces, keyed by student model",
        )
    ]
    return base + dead_letters + internal


@dataclass
class TopicReport:
    """One topic as read back from the broker, and how it differs from the design."""

    name: str
    exists: bool
    partitions: int | None
    config: dict[str, str]
    drift: list[str]
    purpose: str = ""

    @property
    def ok(self) -> bool:
        return self.exists and not self.drift


def admin_client(settings: KafkaSettings) -> AdminClient:
    return AdminClient(settings.client_config())


def create_topics(settings: KafkaSettings, admin: AdminClient | None = None) -> dict[str, str]:
    """Create every missing topic; leave existing ones alone. Returns name → 'created'|'exists'."""
    specs = {settings.topic(spec.name): spec for spec in expected_topics(settings)}
    return create_named_topics(settings, specs, admin)


def create_named_topics(
    settings: KafkaSettings, specs: dict[str, TopicSpec], admin: AdminClient | None = None
) -> dict[str, str]:
    """Create the missing topics of ``specs`` (full name → spec) and wait until all have leaders."""
    admin = admin or admin_client(settings)
    existing = set(admin.list_topics(timeout=10).topics)
    outcome: dict[str, str] = {}
    new = []
    for full, spec in specs.items():
        if full in existing:
            outcome[full] = "exists"
            continue
        new.append(
            NewTopic(
                full,
                num_partitions=spec.partitions,
                replication_factor=settings.replication_factor,
                config=spec.config,
            )
        )
    for full, future in admin.create_topics(new, operation_timeout=30).items() if new else []:
        try:
            future.result()
            outcome[full] = "created"
        except KafkaException as exc:
            if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":  # lost a race with another creator
                raise
            outcome[full] = "exists"
    _wait_until_visible(admin, set(outcome))
    return outcome


def _has_leaders(topic: object) -> bool:
    partitions = topic.partitions  # type: ignore[attr-defined]
    return (
        not topic.error
        and bool(partitions)
        and all(  # type: ignore[attr-defined]
            p.leader >= 0 and not p.error for p in partitions.values()
        )
    )


def _wait_until_visible(admin: AdminClient, names: set[str], timeout: float = 15.0) -> None:
    """Creation is acknowledged before the topic has leaders everywhere; wait until it has."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        topics = admin.list_topics(timeout=5).topics
        if all(n in topics and _has_leaders(topics[n]) for n in names):
            return
        time.sleep(0.1)
    raise TimeoutError(f"topics not visible in metadata after {timeout}s: {sorted(names)}")


def describe_topics(settings: KafkaSettings, admin: AdminClient | None = None) -> list[TopicReport]:
    """Read every topic back from the broker and compare it with the design."""
    admin = admin or admin_client(settings)
    specs = expected_topics(settings)
    # Asked by name where the listing lacks one: a topic hidden by ACLs is NotAuthorized.
    metadata = existing_topics(admin, [settings.topic(s.name) for s in specs], timeout=10)
    present = [s for s in specs if settings.topic(s.name) in metadata]
    resources = [ConfigResource(ResourceType.TOPIC, settings.topic(s.name)) for s in present]
    configs: dict[str, dict[str, str]] = {}
    for resource, future in admin.describe_configs(resources).items() if resources else []:
        configs[resource.name] = {k: v.value for k, v in future.result().items()}
    reports = []
    for spec in specs:
        full = settings.topic(spec.name)
        if full not in metadata:
            reports.append(TopicReport(full, False, None, {}, ["missing"], spec.purpose))
            continue
        partitions = len(metadata[full].partitions)
        actual = configs.get(full, {})
        drift = [
            f"{key}={actual.get(key)!s} (expected {value})"
            for key, value in spec.config.items()
            if actual.get(key) != value
        ]
        if partitions != spec.partitions:
            drift.append(f"partitions={partitions} (expected {spec.partitions})")
        reports.append(TopicReport(full, True, partitions, actual, drift, spec.purpose))
    by_name = {r.name: r for r in reports}
    exp, fb = by_name[settings.topic(EXPERIENCES)], by_name[settings.topic(FEEDBACK)]
    if exp.exists and fb.exists and exp.partitions != fb.partitions:
        fb.drift.append(
            f"partitions={fb.partitions} differ from experiences' {exp.partitions}: "
            "a query's experience and feedback would meet in different sampler tasks"
        )
    return reports
