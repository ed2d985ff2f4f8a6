"""What an operator is told when tier3 cannot do what was asked: one cause, one setting to check.

Every command ends in one of a few outcomes, each with its own exit code (documented in
``docs/operations.md`` and ``tier3 --help``), the way ``kafka-topics`` and ``kcat`` tell "cannot
connect" apart from "not allowed":

====  ==========================================================================
code  meaning
====  ==========================================================================
0     done
1     the operation failed or was refused (the line says why)
2     bad usage: a flag, a setting or a window that cannot be right
3     the broker could not be reached (or did not answer in time)
4     ``topics describe``: a topic differs from the design
5     authentication failed (SASL/SSL credentials)
6     not authorized (the broker's ACLs refuse the principal)
7     a topic (or partition) does not exist
====  ==========================================================================

Domain errors that an operator can act on derive from ``OperatorError``; ``explain`` turns any
exception, including confluent-kafka's ``KafkaException`` found anywhere in the cause chain, into
one of them, or returns None for a bug (which keeps its traceback).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TYPE_CHECKING

from confluent_kafka import KafkaError, KafkaException, Producer
from pydantic import ValidationError

if TYPE_CHECKING:
    from tier3.streams.kafka.settings import KafkaSettings

OK, FAILED, USAGE, UNREACHABLE, DRIFT, AUTHENTICATION, AUTHORIZATION, TOPIC_MISSING = range(8)

_CONNECTION = "check TIER3_BOOTSTRAP_SERVERS (and that the broker runs)"
_CREDENTIALS = (
    "check TIER3_SASL_USERNAME, TIER3_SASL_PASSWORD(_FILE), TIER3_SASL_MECHANISM and "
    "TIER3_SECURITY_PROTOCOL"
)
_ACLS = "check the ACLs granted to TIER3_SASL_USERNAME on the broker"
# What the refused principal lacks, by the resource the broker names in its refusal.
_RESOURCE = {
    KafkaError.TOPIC_AUTHORIZATION_FAILED: "the topics",
    KafkaError.GROUP_AUTHORIZATION_FAILED: "the consumer group",
    KafkaError.CLUSTER_AUTHORIZATION_FAILED: "the cluster",
    KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED: "the transactional id",
}
_TOPICS = "run `tier3 topics create`, and check TIER3_TOPIC_PREFIX"


class OperatorError(Exception):
    """A failure the operator can act on: one line (the message) and an exit code."""

    exit_code = FAILED


class UsageError(OperatorError, ValueError):
    """A flag, a setting or a window that cannot be right; the message names it."""

    exit_code = USAGE


class BrokerUnreachable(OperatorError):
    exit_code = UNREACHABLE


class AuthenticationFailed(OperatorError):
    exit_code = AUTHENTICATION


class NotAuthorized(OperatorError):
    exit_code = AUTHORIZATION


class TopicMissing(OperatorError, LookupError):
    exit_code = TOPIC_MISSING


_UNREACHABLE_CODES = {
    KafkaError._TRANSPORT,
    KafkaError._ALL_BROKERS_DOWN,
    KafkaError._RESOLVE,
    KafkaError._TIMED_OUT,
    KafkaError._MSG_TIMED_OUT,
    KafkaError.REQUEST_TIMED_OUT,
    KafkaError.NETWORK_EXCEPTION,
}
_AUTHENTICATION_CODES = {
    KafkaError._AUTHENTICATION,
    KafkaError._SSL,
    KafkaError.SASL_AUTHENTICATION_FAILED,
    KafkaError.ILLEGAL_SASL_STATE,
    KafkaError.UNSUPPORTED_SASL_MECHANISM,
}
_AUTHORIZATION_CODES = set(_RESOURCE)
_MISSING_CODES = {
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError._UNKNOWN_TOPIC,
    KafkaError._UNKNOWN_PARTITION,
}


def topic_refused(topic: str) -> NotAuthorized:
    """A topic the principal may not describe. Kafka leaves such topics out of a listing, so
    without asking for it by name it would read as "missing"."""
    return NotAuthorized(
        f"not authorized to describe topic {topic}; {_ACLS} (e.g. kafka-acls --add "
        f"--allow-principal User:<name> --operation All --topic {topic})"
    )


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _kafka_error(exc: BaseException) -> KafkaError | None:
    for link in _chain(exc):
        if isinstance(link, KafkaException) and link.args and isinstance(link.args[0], KafkaError):
            return link.args[0]
        if isinstance(link, KafkaError):
            return link
    return None


def from_kafka_error(error: KafkaError, settings: KafkaSettings | None = None) -> OperatorError:
    """The operator's reading of one librdkafka error."""
    code, text = error.code(), error.str()
    where = f" at {settings.bootstrap_servers}" if settings is not None else ""
    if code in _AUTHENTICATION_CODES:
        return AuthenticationFailed(f"authentication failed{where} ({text}); {_CREDENTIALS}")
    if code in _AUTHORIZATION_CODES:
        return NotAuthorized(f"not authorized on {_RESOURCE[code]} ({text}); {_ACLS}")
    if code in _MISSING_CODES:
        return TopicMissing(f"topic or partition missing ({text}); {_TOPICS}")
    if code in _UNREACHABLE_CODES:
        return BrokerUnreachable(f"broker not reachable{where} ({text}); {_CONNECTION}")
    return OperatorError(f"Kafka error {error.name()}: {text}")


def probe(settings: KafkaSettings, timeout_s: float = 6.0) -> KafkaError | None:
    """Connect once and return the first error librdkafka reports (None: the broker answers).

    A request that fails for want of a connection says only "transport failure" or "timed out";
    the reason (refused, bad credentials, TLS) is reported on the client's error callback. This
    asks a throw-away producer for it, the way ``kcat -L`` reports why it cannot connect.
    """
    # On a thread of its own, where no exception is being handled. ``explain`` runs in except
    # blocks, and a KafkaException raised there by confluent-kafka (2.16) keeps the handled
    # exception alive for good: its traceback's frames, and the clients they hold, are never
    # freed. A client never destroyed still runs its threads while the interpreter exits, and
    # ``tier3 status`` with a wrong password crashed so (SIGSEGV after its last line) in CI.
    with ThreadPoolExecutor(1, thread_name_prefix="tier3-probe") as pool:
        return pool.submit(_probe, settings, timeout_s).result()


def _probe(settings: KafkaSettings, timeout_s: float) -> KafkaError | None:
    seen: list[KafkaError] = []
    try:
        config = {**settings.client_config(), "error_cb": seen.append, "log_level": 0}
    except ValueError:
        return None
    config.pop("logger", None)
    producer = Producer(config)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            try:
                producer.list_topics(timeout=1.0)
                return None
            except KafkaException as exc:
                producer.poll(0.1)
                decisive = [e for e in seen if e.code() in _AUTHENTICATION_CODES]
                if decisive:
                    return decisive[0]
                if seen and seen[-1].code() == KafkaError._ALL_BROKERS_DOWN:
                    earlier = [e for e in seen if e.code() != KafkaError._ALL_BROKERS_DOWN]
                    return earlier[0] if earlier else seen[-1]
                last: KafkaError | None = exc.args[0] if exc.args else None
        return seen[0] if seen else last
    finally:
        producer.poll(0)


def explain(exc: BaseException, settings: KafkaSettings | None = None) -> OperatorError | None:
    """The operator's reading of ``exc``, or None if it is a bug (keep the traceback then).

    A connection failure is probed once more (``probe``) so that bad credentials are reported as
    such, not as an unreachable broker.
    """
    if isinstance(exc, OperatorError) and exc.exit_code != FAILED:
        return exc
    if isinstance(exc, ValidationError):
        return UsageError(f"bad setting: {exc.errors()[0]['msg']}")
    found = _kafka_error(exc)
    if found is not None:
        problem = from_kafka_error(found, settings)
    elif any(isinstance(link, FutureTimeout | TimeoutError) for link in _chain(exc)):
        problem = BrokerUnreachable(f"the broker did not answer in time; {_CONNECTION}")
    elif isinstance(exc, OperatorError):
        return exc
    else:
        return None
    if isinstance(problem, BrokerUnreachable) and settings is not None:
        cause = probe(settings)
        if cause is not None:
            problem = from_kafka_error(cause, settings)
    if type(problem) is OperatorError and isinstance(exc, OperatorError):
        return exc  # a Kafka error with no better reading: the domain's own message
    return problem
