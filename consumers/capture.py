"""The capture consumer: capture jobs in, teacher and student traces out, many jobs at once.

Design. A job is I/O-bound (a teacher call takes seconds), so one process runs hundreds at once
as asyncio tasks on one event loop, with the async SDKs. The confluent-kafka consumer lives on the
same loop thread and is polled without blocking (``consume(timeout=0)``, then a short sleep when
idle), so rebalance callbacks, offset books, pausing and commits all happen on one thread and need
no locks. The producer's delivery callbacks come from a small polling thread and are handed to
the loop with ``call_soon_threadsafe``. Object writes (blocking fsspec calls) run in a thread pool.

Flow control. At most ``concurrency`` jobs are in flight. Jobs fetched beyond that wait in a
small buffer (``prefetch``, a quarter of the concurrency); when the buffer is full the consumer
pauses every assigned partition and keeps polling (so it stays in the group), and resumes when
the buffer is half empty. The buffer hides the cost of resuming (a fetch round trip, which was
a second per resume when the process paused at the in-flight limit itself).

Delivery. A job is finished when its trace object is stored and its ``traces`` record is
acknowledged (acks=all), or when its dead letter is acknowledged. Offsets are committed only past
a contiguous run of finished jobs (``offsets.PartitionBook``). A crash therefore redelivers jobs
that may already be traced; the object key and the message key both derive from query_id, so the
rewrite replaces the same object and the compacted topic keeps one latest value per query.

The task. The configured task (``TIER3_TASK``) renders each job's query and context into the
messages both providers are sent, and judges whether the teacher's reply is a valid answer. The
trace records those messages (``teacher_messages``, redacted like every other text field), so
the dataset and the evaluation use what the teacher saw instead of rendering it again.

Failures. An undecodable job goes straight to ``capture-jobs.dlq``. A job whose capture fails
(teacher error after the SDK's own retries, storage or broker error) is tried ``attempts`` times
with backoff and jitter, then dead-lettered with the error; the consumer goes on. A teacher reply
that is not the task's JSON is not a failure: it is kept, and marked ``teacher_answer_valid=false``.
A student failure is recorded in ``student_error``; the teacher's trace is still worth keeping.

Shutdown (SIGTERM). Stop taking jobs, give in-flight ones ``shutdown_deadline_s`` to finish,
cancel the rest (they are redelivered to whoever takes the partition), commit what is done.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import structlog
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from tier3.consumers import metrics
from tier3.consumers.object_store import TraceStore, UnsafeKeyError
from tier3.consumers.offsets import OffsetBooks, PartitionBook
from tier3.consumers.providers import Answer, Provider, Question
from tier3.consumers.redaction import Redactor
from tier3.consumers.settings import CaptureSettings
from tier3.consumers.trace_record import trace_of
from tier3.schemas import DecodeError
from tier3.schemas.registry import CAPTURE_JOB, TRACE
from tier3.streams.kafka.dead_letters import send_dead_letter
from tier3.streams.kafka.events import EventProducer, codec_of, consumer
from tier3.streams.kafka.settings import KafkaSettings
from tier3.streams.kafka.topics import CAPTURE_JOBS, TRACES
from tier3.tasks.contract import Task
from tier3.tasks.registry import configured_task

log = structlog.get_logger("tier3.capture")

_IDLE_SLEEP_S = 0.01
_PROGRESS_EVERY_S = 30.0


class CaptureConsumer:
    """One member of the capture consumer group."""

    def __init__(
        self,
        kafka: KafkaSettings,
        settings: CaptureSettings,
        store: TraceStore,
        teacher: Provider,
        student: Provider,
        redactor: Redactor | None = None,
        task: Task | None = None,
    ) -> None:
        self.kafka = kafka
        self.task = task or configured_task()
        self.settings = settings
        self.store = store
        self.teacher = teacher
        self.student = student
        self.redactor = redactor
        self.codec = codec_of(kafka)
        self.producer = EventProducer(kafka)
        self.books = OffsetBooks()
        self.tasks: set[asyncio.Task[None]] = set()
        # Jobs fetched but not started: a small buffer, so that resuming a paused partition (a
        # fetch round trip, up to a second) never leaves the process idle.
        self.waiting: deque[tuple[Message, PartitionBook]] = deque()
        self.prefetch = max(8, settings.concurrency // 4)
        self.paused = False
        self._repause = False
        self._consumer: Consumer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._io = ThreadPoolExecutor(max_workers=16, thread_name_prefix="trace-store")
        self._producer_stop = threading.Event()
        self.traced = 0
        self.dead_lettered = 0

    # -- the loop ------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set; then drain, commit and close."""
        self._loop = asyncio.get_running_loop()
        poller = threading.Thread(target=self._poll_producer, name="producer-poll", daemon=True)
        poller.start()
        membership = {"session.timeout.ms": self.settings.session_timeout_ms}
        if self.settings.instance_id:
            membership["group.instance.id"] = self.settings.instance_id
        self._consumer = consumer(
            self.kafka, self.settings.group, on_commit=self._on_commit, **membership
        )
        self._consumer.subscribe(
            [self.kafka.topic(CAPTURE_JOBS)],
            on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost,
        )
        log.info("capture consumer started", group=self.settings.group, task=self.task.name,
                 concurrency=self.settings.concurrency, teacher=self.teacher.name,
                 teacher_model=self.teacher.model, student=self.student.name,
                 student_model=self.student.model, store=self.store.root)
        next_commit = time.monotonic() + self.settings.commit_interval_s
        progress = (time.monotonic(), 0)
        try:
            while not stop.is_set():
                taken = self._take_jobs()
                now = time.monotonic()
                if now >= next_commit:
                    self._commit(asynchronous=True)
                    next_commit = now + self.settings.commit_interval_s
                if now - progress[0] >= _PROGRESS_EVERY_S:
                    progress = self._log_progress(progress)
                # Yield to the jobs; sleep a little when there was nothing to take.
                await asyncio.sleep(0 if taken else _IDLE_SLEEP_S)
        finally:
            await self._shut_down()

    def _log_progress(self, since: tuple[float, int]) -> tuple[float, int]:
        """A progress line for operators without Prometheus; returns the new reference point."""
        now, finished = time.monotonic(), self.traced + self.dead_lettered
        rate = (finished - since[1]) / (now - since[0])
        log.info("capture progress", jobs_per_s=round(rate, 1), in_flight=len(self.tasks),
                 waiting=len(self.waiting), traced=self.traced, dead_lettered=self.dead_lettered)
        return now, finished

    def _take_jobs(self) -> int:
        """Start waiting jobs while there is room; fetch more; pause or resume the fetching."""
        assert self._consumer is not None
        limit = self.settings.concurrency
        while self.waiting and len(self.tasks) < limit:
            self._start(*self.waiting.popleft())
        buffered = len(self.waiting)
        if not self.paused and buffered >= self.prefetch:
            self._set_paused(True)
        elif self.paused and buffered <= self.prefetch // 2:
            self._set_paused(False)
        elif self.paused and self._repause:
            self._set_paused(True)
        # Paused partitions return nothing; polling goes on so rebalances and heartbeats are served.
        room = (limit - len(self.tasks)) + (self.prefetch - buffered)
        messages = self._consumer.consume(num_messages=max(1, min(room, 500)), timeout=0)
        for msg in messages:
            if msg.error():
                if msg.error().code() != KafkaError._PARTITION_EOF:
                    log.warning("consumer error", error=str(msg.error()))
                continue
            book = self.books.book(msg.topic(), msg.partition())
            book.take(msg.offset())
            if len(self.tasks) < limit:
                self._start(msg, book)
            else:
                self.waiting.append((msg, book))
        metrics.IN_FLIGHT.set(len(self.tasks))
        return len(messages)

    def _start(self, msg: Message, book: PartitionBook) -> None:
        task = asyncio.get_running_loop().create_task(self._handle(msg, book))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        task.add_done_callback(self._report_crash)

    @staticmethod
    def _report_crash(task: asyncio.Task[None]) -> None:
        """A job task that died of a bug: its offset stays uncommitted (redelivered on restart),
        and the partition's commits stop behind it, so say so loudly."""
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("capture job crashed; its partition's commits wait until a restart",
                      error=f"{type(exc).__name__}: {exc}")

    def _set_paused(self, paused: bool) -> None:
        assert self._consumer is not None
        assignment = self._consumer.assignment()
        if assignment:
            (self._consumer.pause if paused else self._consumer.resume)(assignment)
        self.paused, self._repause = paused, False
        metrics.PAUSED.set(1 if paused else 0)
        event = "partitions paused" if paused else "partitions resumed"
        log.debug(event, in_flight=len(self.tasks))

    # -- one job -------------------------------------------------------------------------------

    async def _handle(self, msg: Message, book: PartitionBook) -> None:
        try:
            job = self.codec.decode(msg.value(), expect=CAPTURE_JOB).record
        except DecodeError as exc:
            await self._dead_letter(msg, f"undecodable capture job: {exc}", exc, "undecodable")
            book.finish(msg.offset())
            return
        attempts = self.settings.attempts
        for attempt in range(1, attempts + 1):
            try:
                await self._capture(job)
            except UnsafeKeyError as exc:  # no attempt can fix the key
                await self._dead_letter(msg, str(exc), exc, "failed")
                break
            except Exception as exc:
                log.warning("capture attempt failed", query_id=job["query_id"], attempt=attempt,
                            of=attempts, error=f"{type(exc).__name__}: {exc}")
                if attempt == attempts:
                    reason = f"failed after {attempts} attempts: {type(exc).__name__}: {exc}"
                    await self._dead_letter(msg, reason, exc, "failed")
                    break
                metrics.RETRIES.labels("job").inc()
                backoff = self.settings.attempt_backoff_s * 2 ** (attempt - 1)
                await asyncio.sleep(backoff * random.uniform(0.5, 1.5))
            else:
                self.traced += 1
                metrics.JOBS.labels("traced").inc()
                break
        book.finish(msg.offset())

    async def _capture(self, job: dict[str, Any]) -> None:
        """Ask teacher and student at once, then store the trace and produce it; both confirmed."""
        query_id = job["query_id"]
        uri = self.store.uri(query_id)  # fails early on an unusable query_id
        question = Question.of(self.task, job["query"], job["context"])
        teacher, student = await asyncio.gather(
            self._ask(self.teacher, question, metrics.TEACHER_LATENCY, "teacher"),
            self._ask(self.student, question, metrics.STUDENT_LATENCY, "student"),
            return_exceptions=True,
        )
        if isinstance(teacher, BaseException):
            raise teacher
        trace, document = trace_of(
            job, question, teacher, student, uri=uri, task=self.task,
            teacher_provider=self.teacher, student_provider=self.student, redactor=self.redactor,
        )
        loop = asyncio.get_running_loop()
        with metrics.SINK_LATENCY.labels("object").time():
            await loop.run_in_executor(self._io, self.store.write, query_id, document)
        with metrics.SINK_LATENCY.labels("topic").time():
            await self._produce_trace(query_id, trace)

    async def _ask(
        self, provider: Provider, question: Question, latency: Any, role: str
    ) -> tuple[Answer, float]:
        started = time.perf_counter()
        answer = await provider.answer(question)
        elapsed = time.perf_counter() - started
        latency.labels(provider.name).observe(elapsed)
        metrics.TOKENS.labels(role, "input").inc(answer.input_tokens)
        metrics.TOKENS.labels(role, "output").inc(answer.output_tokens)
        return answer, elapsed * 1000

    # -- writes that must be confirmed ---------------------------------------------------------

    def _delivery_future(self) -> tuple[asyncio.Future[None], Any]:
        """A future and the delivery callback (called on the poll thread) that resolves it."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()

        def resolve(err: KafkaError | None) -> None:
            if future.done():
                return
            if err is None:
                future.set_result(None)
            else:
                future.set_exception(RuntimeError(f"delivery failed: {err}"))

        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            loop.call_soon_threadsafe(resolve, err)

        return future, on_delivery

    async def _produce_trace(self, query_id: str, trace: dict[str, Any]) -> None:
        future, on_delivery = self._delivery_future()
        self.producer.send(TRACES, TRACE, query_id, trace, on_delivery=on_delivery)
        await future

    async def _dead_letter(self, msg: Message, reason: str, exc: BaseException, kind: str) -> None:
        """Put the job on the dead-letter topic; retry until the broker takes it."""
        delay = 0.5
        while True:
            future, on_delivery = self._delivery_future()
            try:
                send_dead_letter(self.producer, msg, reason, type(exc).__name__, "capture",
                                 on_delivery=on_delivery)
                await future
                break
            except (RuntimeError, BufferError, KafkaException) as err:
                log.error("dead letter not delivered; retrying", error=str(err))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30)
        self.dead_lettered += 1
        metrics.DEAD_LETTERS.labels(kind).inc()
        metrics.JOBS.labels("dead_letter").inc()
        key = msg.key().decode(errors="replace") if msg.key() else None
        log.warning("capture job dead-lettered", key=key, partition=msg.partition(),
                    offset=msg.offset(), reason=reason)

    def _poll_producer(self) -> None:
        while not self._producer_stop.is_set():
            self.producer.poll(0.05)

    # -- commits and rebalances ----------------------------------------------------------------

    def _commit(self, asynchronous: bool, partitions: list[TopicPartition] | None = None) -> None:
        assert self._consumer is not None
        offsets = self.books.to_commit(partitions, again=not asynchronous)
        if not offsets:
            return
        try:
            self._consumer.commit(offsets=offsets, asynchronous=asynchronous)
        except Exception as exc:  # a failed commit only means redelivery later; say so, go on
            log.warning("offset commit failed", error=str(exc))

    def _on_commit(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        if err is not None and err.code() != KafkaError._NO_OFFSET:
            log.warning("offset commit failed", error=str(err))

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("partitions assigned", partitions=[p.partition for p in partitions])
        self._repause = self.paused  # new partitions of a full process start paused

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("partitions revoked", partitions=[p.partition for p in partitions])
        self._commit(asynchronous=False, partitions=partitions)
        self.books.drop(partitions)
        self._forget_waiting(partitions)

    def _on_lost(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.warning("partitions lost", partitions=[p.partition for p in partitions])
        self.books.drop(partitions)
        self._forget_waiting(partitions)

    def _forget_waiting(self, partitions: list[TopicPartition]) -> None:
        """Jobs of a partition that is no longer ours, not started yet: its next owner does them."""
        gone = {(p.topic, p.partition) for p in partitions}
        self.waiting = deque(
            (m, b) for m, b in self.waiting if (m.topic(), m.partition()) not in gone
        )

    # -- shutdown ------------------------------------------------------------------------------

    async def _shut_down(self) -> None:
        deadline = self.settings.shutdown_deadline_s
        log.info("stopping: finishing in-flight jobs", in_flight=len(self.tasks),
                 not_started=len(self.waiting), deadline_s=deadline)
        self.waiting.clear()  # never started, never committed: redelivered
        if self._consumer is not None and self._consumer.assignment():
            self._consumer.pause(self._consumer.assignment())
        pending: set[asyncio.Task[None]] = set()
        if self.tasks:
            _, pending = await asyncio.wait(set(self.tasks), timeout=deadline)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
            log.warning("jobs left unfinished at the deadline; they will be redelivered",
                        unfinished=len(pending))
        if self._consumer is not None:
            self._commit(asynchronous=False)
            self._consumer.close()
        self.producer.flush(10)
        self._producer_stop.set()
        self._io.shutdown(wait=True)
        await asyncio.gather(self.teacher.aclose(), self.student.aclose(), return_exceptions=True)
        metrics.IN_FLIGHT.set(0)
        log.info("capture consumer stopped", traced=self.traced, dead_lettered=self.dead_lettered)
