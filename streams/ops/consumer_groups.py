"""Consumer-group tooling: list tier3's groups, show their lag, and move their offsets safely.

Everything goes through confluent-kafka's ``AdminClient`` (the same Kafka protocol requests that
Kafka's own ``kafka-consumer-groups`` tool sends); nothing here speaks the protocol by hand.

Design choices, following ``kafka-consumer-groups`` where it makes sense:

* "tier3's groups" are the groups that have committed offsets on, or members assigned to, a topic
  with the configured prefix. Group ids are chosen by each stage, so the topics they read are the
  one reliable sign of belonging.
* Lag is the log-end offset minus the committed offset. A partition with no committed offset is
  shown with lag = every message still retained, because tier3's consumers start from the earliest
  offset (``auto.offset.reset=earliest``).
* A reset is planned first and only applied with ``execute=True`` (the CLI's ``--execute``); a plan
  is the table of current → new offsets. Targets are clamped into ``[low, high]`` watermarks, as
  Kafka's tool does, so a shift past either end lands on that end.
* A reset is refused while the group has members: their in-memory positions would overwrite the
  new offsets on their next commit. (Kafka refuses for the same reason.)
* Before offsets are altered, the old ones are written to a JSON backup; ``reset --from-file``
  with that backup is the undo.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from confluent_kafka import (
    ConsumerGroupState,
    ConsumerGroupTopicPartitions,
    KafkaException,
    TopicPartition,
)
from confluent_kafka.admin import AclOperation, AdminClient
from tier3.streams.kafka import offsets
from tier3.streams.kafka.errors import NotAuthorized, OperatorError, TopicMissing, UsageError
from tier3.streams.kafka.offsets import Partition
from tier3.streams.kafka.settings import KafkaSettings
from tier3.streams.kafka.topics import expected_topics
from tier3.streams.ops.group_records import (
    GroupDescription,
    GroupSummary,
    OffsetMove,
    PartitionLag,
    ResetPlan,
)

_TIMEOUT = 15.0  # seconds librdkafka gives each admin request
_GRACE = 5.0  # and how much longer we wait for its answer
_INACTIVE = (ConsumerGroupState.EMPTY, ConsumerGroupState.DEAD)


class GroupError(OperatorError, RuntimeError):
    """A group operation that cannot be done as asked; the message says why and what to do."""


def _state_name(state: ConsumerGroupState | None) -> str:
    return state.name if state is not None else "UNKNOWN"


def _result(future: Any, what: str) -> Any:
    """Wait for an admin request sent with ``request_timeout=_TIMEOUT``.

    The wait outlasts the request's own timeout, so librdkafka always answers first: with the
    result, or with the error that says why (unreachable, refused), never a bare timeout here.
    """
    try:
        return future.result(timeout=_TIMEOUT + _GRACE)
    except KafkaException as exc:
        raise GroupError(f"{what} failed: {exc.args[0].str() if exc.args else exc}") from exc
    except Exception as exc:
        raise GroupError(f"{what} failed: {type(exc).__name__}: {exc}") from exc


class ConsumerGroups:
    """Operator access to consumer groups of one tier3 deployment (one topic prefix)."""

    def __init__(self, settings: KafkaSettings, admin: AdminClient | None = None) -> None:
        self.settings = settings
        # librdkafka's own log lines would repeat, less clearly, the errors raised here.
        self.admin = admin or AdminClient({**settings.client_config(), "log_level": 0})

    # -- reading --------------------------------------------------------------------------------

    def full_topic(self, name: str) -> str:
        """A design name (``capture-jobs``) or a full name (``tier3.capture-jobs``) → full name."""
        prefix = self.settings.topic_prefix
        return name if name.startswith(prefix) else self.settings.topic(name)

    def _ours(self, topic: str) -> bool:
        return topic.startswith(self.settings.topic_prefix)

    def all_group_ids(self) -> list[str]:
        """Every group the cluster knows. A listing that some broker did not answer is an error,
        never a shorter list: "could not ask" must not read as "no groups"."""
        listing = _result(self.admin.list_consumer_groups(request_timeout=_TIMEOUT), "list groups")
        if listing.errors:
            first = listing.errors[0]
            raise GroupError(
                f"list groups failed on {len(listing.errors)} request(s): {first.str()}"
            ) from KafkaException(first)
        if not listing.valid and not self._may_list_every_group():
            # The broker lists only the groups the principal may describe: none could be hidden.
            raise NotAuthorized(
                "no consumer group is visible, and TIER3_SASL_USERNAME may not list them all "
                "(Describe on the cluster); check the ACLs granted to it on the broker"
            )
        return sorted(g.group_id for g in listing.valid)

    def _may_list_every_group(self) -> bool:
        cluster = _result(
            self.admin.describe_cluster(
                include_authorized_operations=True, request_timeout=_TIMEOUT
            ),
            "describe the cluster",
        )
        allowed = set(cluster.authorized_operations or [])
        return bool(allowed & {AclOperation.DESCRIBE, AclOperation.ALL})

    def committed(self, group: str) -> dict[Partition, int]:
        """The group's committed offsets, by (topic, partition)."""
        return self._committed_of([group])[group]

    def _committed_of(self, groups: list[str]) -> dict[str, dict[Partition, int]]:
        # One request per group (the API's limit), all in flight at once.
        futures = {
            g: self.admin.list_consumer_group_offsets(
                [ConsumerGroupTopicPartitions(g)], request_timeout=_TIMEOUT
            )[g]
            for g in groups
        }
        found = {}
        for group, future in futures.items():
            answer = _result(future, f"reading offsets of group {group!r}")
            found[group] = {
                (tp.topic, tp.partition): tp.offset
                for tp in answer.topic_partitions or []
                if tp.offset >= 0 and tp.error is None
            }
        return found

    def _describe(self, groups: list[str]) -> dict[str, Any]:
        if not groups:
            return {}
        futures = self.admin.describe_consumer_groups(groups, request_timeout=_TIMEOUT)
        return {g: _result(f, f"describing group {g!r}") for g, f in futures.items()}

    def watermarks(
        self, partitions: Iterable[Partition], missing_ok: bool = False
    ) -> dict[Partition, tuple[int, int]]:
        return self._offsets(offsets.watermarks, list(partitions), missing_ok)

    def offsets_for_time(self, partitions: Iterable[Partition], ms: int) -> dict[Partition, int]:
        return self._offsets(offsets.offsets_for_time, list(partitions), ms)

    def _offsets(self, lookup: Any, *args: Any) -> Any:
        try:
            return lookup(self.admin, *args)
        except offsets.OffsetLookupError as exc:
            raise GroupError(str(exc)) from exc

    def partitions_of(self, topic: str) -> list[Partition]:
        return offsets.partitions_of(self.admin, topic)

    def describe(self, group: str) -> GroupDescription:
        """State, members and per-partition lag of one group."""
        return self._describe_all([group])[group]

    def _describe_all(
        self, groups: list[str], keep: Callable[[list[Partition]], bool] | None = None
    ) -> dict[str, GroupDescription]:
        """Several groups at once: a handful of batched requests, however many groups. With
        ``keep``, only groups whose partitions it accepts are described to the end."""
        descriptions = self._describe(groups)
        committed = self._committed_of(groups)
        shapes = {}
        for group in groups:
            members: list[dict[str, Any]] = []
            assigned: dict[Partition, str] = {}
            for m in descriptions[group].members:
                parts = [(tp.topic, tp.partition) for tp in (m.assignment.topic_partitions or [])]
                members.append(
                    {
                        "member_id": m.member_id,
                        "client_id": m.client_id,
                        "host": m.host,
                        "partitions": [f"{t}[{p}]" for t, p in parts],
                    }
                )
                assigned.update(dict.fromkeys(parts, m.client_id))
            keys = sorted(set(committed[group]) | set(assigned))
            if keep is None or keep(keys):
                shapes[group] = (members, assigned, keys)
        # A group keeps offsets on a deleted topic: shown without a log, never failing the rest.
        wanted = {tp for _, _, keys in shapes.values() for tp in keys}
        marks = self.watermarks(wanted, missing_ok=True)
        return {
            group: GroupDescription(
                group,
                _state_name(descriptions[group].state),
                members,
                [
                    PartitionLag(
                        t,
                        p,
                        committed[group].get((t, p)),
                        *marks.get((t, p), (None, None)),
                        assigned.get((t, p)),
                    )
                    for t, p in keys
                ],
            )
            for group, (members, assigned, keys) in shapes.items()
        }

    def list(self, include_all: bool = False) -> list[GroupSummary]:
        """Groups reading this deployment's topics (every group with ``include_all``).

        ``NotAuthorized`` if the principal may not describe a design topic: the offsets on it,
        which make a group one of ours, would be hidden, and the list would read "none".
        ``TopicMissing`` if no design topic exists: a wrong prefix, not "no groups".
        """
        if not include_all:
            names = [self.settings.topic(s.name) for s in expected_topics(self.settings)]
            if not offsets.existing_topics(self.admin, names):
                raise TopicMissing(
                    f"no topic of this deployment exists (prefix {self.settings.topic_prefix!r}); "
                    "run `tier3 topics create`, and check TIER3_TOPIC_PREFIX"
                )
        groups = self.all_group_ids()
        if not groups:
            return []
        keep = None if include_all else (lambda keys: any(self._ours(t) for t, _ in keys))
        return [
            GroupSummary(
                group, d.state, len(d.members), d.lag, sorted({p.topic for p in d.partitions})
            )
            for group, d in self._describe_all(groups, keep).items()
        ]

    # -- resetting ------------------------------------------------------------------------------

    def plan_reset(
        self,
        group: str,
        *,
        topics: list[str] | None = None,
        to_earliest: bool = False,
        to_latest: bool = False,
        to_datetime: datetime | None = None,
        shift_by: int | None = None,
        to_offset: int | None = None,
    ) -> ResetPlan:
        """Plan moving ``group``'s offsets on ``topics`` (default: all it has offsets on)."""
        chosen = [
            name
            for name, on in (
                ("to-earliest", to_earliest),
                ("to-latest", to_latest),
                ("to-datetime", to_datetime is not None),
                ("shift-by", shift_by is not None),
                ("to-offset", to_offset is not None),
            )
            if on
        ]
        if len(chosen) != 1:  # bad usage (exit 2), like a flag that cannot be read
            raise UsageError(
                "choose exactly one of --to-earliest, --to-latest, --to-datetime, --shift-by, "
                "--to-offset (or --from-file)"
            )
        committed = self.committed(group)
        if topics:
            parts = [tp for name in topics for tp in self.partitions_of(self.full_topic(name))]
        else:
            parts = sorted(committed)
            if not parts:
                raise GroupError(
                    f"group {group!r} has no committed offsets; name the topics with --topic"
                )
        marks = self.watermarks(parts)
        if to_datetime is not None:
            ms = int(to_datetime.timestamp() * 1000)
            by_time = self.offsets_for_time(parts, ms)
        moves = []
        for tp in parts:
            low, high = marks[tp]
            current = committed.get(tp)
            if to_earliest:
                target = low
            elif to_latest:
                target = high
            elif to_datetime is not None:
                found = by_time[tp]
                target = found if found >= 0 else high  # nothing that late: the end, as Kafka does
            elif shift_by is not None:
                target = (current if current is not None else low) + shift_by
            else:
                assert to_offset is not None
                target = to_offset
            moves.append(OffsetMove(tp[0], tp[1], current, min(max(target, low), high), low, high))
        return ResetPlan(group, chosen[0], moves)

    def plan_from_file(self, group: str, path: Path) -> ResetPlan:
        """Plan putting back the offsets a backup (or ``export``) file holds."""
        try:
            data = json.loads(Path(path).read_text())
            entries = [(e["topic"], int(e["partition"]), int(e["offset"])) for e in data["offsets"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise GroupError(f"{path} is not an offsets file written by tier3: {exc}") from exc
        if data.get("group") not in (None, group):
            raise GroupError(f"{path} holds offsets of group {data['group']!r}, not {group!r}")
        committed = self.committed(group)
        marks = self.watermarks([(t, p) for t, p, _ in entries])
        moves = [OffsetMove(t, p, committed.get((t, p)), o, *marks[(t, p)]) for t, p, o in entries]
        return ResetPlan(group, f"from-file {path}", moves)

    def export(self, group: str, path: Path) -> Path:
        """Write the group's committed offsets to ``path`` (JSON), for an undo or an audit."""
        committed = self.committed(group)
        document = {
            "group": group,
            "exported_at": datetime.now(UTC).isoformat(),
            "bootstrap_servers": self.settings.bootstrap_servers,
            "offsets": [
                {"topic": t, "partition": p, "offset": o} for (t, p), o in sorted(committed.items())
            ],
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(document, indent=2) + "\n")
        return path

    def _refuse_if_active(self, group: str, action: str) -> None:
        description = self._describe([group])[group]
        if description.members or description.state not in _INACTIVE:
            raise GroupError(
                f"group {group!r} has {len(description.members)} active member(s) "
                f"(state {_state_name(description.state)}); it can only be {action} while "
                "inactive: stop its consumers first"
            )

    def _backup(self, group: str, backup_dir: Path) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in group)
        return self.export(group, backup_dir / f"{safe}-{stamp}-{time.time_ns()}.json")

    def execute(self, plan: ResetPlan, backup_dir: Path) -> ResetPlan:
        """Apply a plan: refuse if the group is active, back up the old offsets, then alter."""
        self._refuse_if_active(plan.group, "reset")
        if not plan.moves:
            raise GroupError("the plan moves no offsets")
        plan.backup = self._backup(plan.group, backup_dir)
        request = ConsumerGroupTopicPartitions(
            plan.group, [TopicPartition(m.topic, m.partition, m.target) for m in plan.moves]
        )
        futures = self.admin.alter_consumer_group_offsets([request], request_timeout=_TIMEOUT)
        answer = _result(futures[plan.group], f"altering offsets of group {plan.group!r}")
        failed = [tp for tp in answer.topic_partitions or [] if tp.error is not None]
        if failed:
            raise GroupError(
                f"the broker refused some offsets ({failed}); the old ones are in {plan.backup}"
            )
        plan.executed = True
        return plan

    def delete(self, group: str, backup_dir: Path) -> Path:
        """Delete an inactive group (its committed offsets go with it), after backing them up.

        ``reset GROUP --from-file <backup> --execute`` brings the offsets back: committing
        offsets for a group id creates the group.
        """
        self._refuse_if_active(group, "deleted")
        backup = self._backup(group, backup_dir)
        futures = self.admin.delete_consumer_groups([group], request_timeout=_TIMEOUT)
        _result(futures[group], f"deleting group {group!r}")
        return backup
