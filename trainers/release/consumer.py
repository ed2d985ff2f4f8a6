"""From a finished training run to a deployed model: evaluate, gate, export, deploy.

``Release.handle(completed)`` takes a TrainingCompleted record and:

1. fetches the run's manifest and weights from object storage (the merged weights when the run
   saved them, else the base merged with the adapter here);
2. rebuilds the held-out split the manifest names from the live traces;
3. **with an Ollama client** (deploying): exports the GGUF, registers it quantized to q4_k_m as
   a candidate and evaluates it *as served*, beside the base as served, the student serving now
   (the champion) and the teacher, on the same queries (``served_eval``); the gate also refuses
   a candidate worse than the champion beyond noise (``champion``). **Without one**: asks the
   checkpoint (``transformers`` generate) and evaluates it against the teacher's answers;
4. writes the readable report next to the run's artefacts (``<run>/eval/report.md``, with the
   before/after table and plot when served) and emits EvalReport with the gate's decision and
   reasons on training-results;
5. if the gate passed and the candidate is served: uploads the GGUF (``<run>/gguf/``), serves the
   candidate under ``ollama_name`` (q4_k_m) and emits ModelDeployed.

``ReleaseConsumer`` runs this for every TrainingCompleted on training-results as its own
consumer group (``tier3 run release``), which is how evaluation happens by itself after each
training without the trainer waiting for it. An event that does not decode goes to the topic's
dead-letter topic; offsets are committed only after the run's events are acknowledged. A
request that already has an EvalReport is not evaluated again (replays and redeliveries).
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import structlog
from confluent_kafka import Message
from tier3.schemas import DecodeError
from tier3.schemas.codec import Record
from tier3.schemas.registry import EVAL_REPORT, TRAINING_COMPLETED
from tier3.streams.backend.ab_test import compare, read_ratings
from tier3.streams.backend.deployments import DeploymentLog
from tier3.streams.kafka.dead_letters import send_dead_letter
from tier3.streams.kafka.events import EventProducer, codec_of, consumer
from tier3.streams.kafka.reader import read_to_end
from tier3.streams.kafka.settings import KafkaSettings, LocalSettings
from tier3.streams.kafka.topics import TRAINING_RESULTS
from tier3.trainers.artifacts import RunArtifacts
from tier3.trainers.release.evaluate import (
    AnswerValidator,
    EvalMetrics,
    evaluate,
    generate_with_transformers,
    held_out_from_traces,
    replies_from,
)
from tier3.trainers.release.gate import GateDecision, decide
from tier3.trainers.release.gguf_export import GGUF_NAME, export_gguf, merge_adapter
from tier3.trainers.release.report import write_report
from tier3.trainers.release.served_eval import ServedEvaluation, evaluate_candidate, promote
from tier3.trainers.release.settings import ReleaseSettings
from tier3.trainers.training.traces_source import read_traces

log = structlog.get_logger("tier3.release")


@dataclass
class Released:
    metrics: EvalMetrics
    decision: GateDecision
    eval_report: Record
    deployed: Record | None


def fetch_dir(uri: str, local: Path) -> Path:
    """Copy a folder from object storage to ``local``."""
    fs, path = fsspec.core.url_to_fs(uri)
    local.mkdir(parents=True, exist_ok=True)
    fs.get(path.rstrip("/") + "/", str(local) + "/", recursive=True)
    return local


def read_json(uri: str) -> dict[str, Any]:
    fs, path = fsspec.core.url_to_fs(uri)
    return json.loads(fs.cat_file(path))


def weights_of(completed: Record, work: Path) -> Path:
    """A local folder with the run's merged weights (merging the adapter if need be)."""
    if completed.get("merged_uri"):
        return fetch_dir(completed["merged_uri"], work / "merged")
    adapter = fetch_dir(completed["adapter_uri"], work / "adapter")
    return merge_adapter(completed["base_model"], adapter, work / "merged")


class Release:
    """Evaluate a finished run, and deploy it when it passes the gate."""

    def __init__(
        self,
        settings: KafkaSettings,
        local: LocalSettings,
        options: ReleaseSettings | None = None,
        producer: EventProducer | None = None,
        ollama_client: Any = None,
    ) -> None:
        """``ollama_client`` None: evaluate and gate, deploy nothing."""
        self.settings = settings
        self.local = local
        self.options = options or ReleaseSettings()
        self.producer = producer or EventProducer(settings)
        self.ollama_client = ollama_client

    def handle(self, completed: Record) -> Released:
        o = self.options
        model, request_id = completed["model"], completed["request_id"]
        artifacts = RunArtifacts(self.local.object_root, model, request_id)
        with tempfile.TemporaryDirectory(prefix="tier3-release-") as tmp:
            work = Path(tmp)
            manifest = read_json(completed["manifest_uri"])
            examples = held_out_from_traces(manifest, read_traces(self.settings).traces)
            if o.max_examples:
                examples = examples[: o.max_examples]
            checkpoint = weights_of(completed, work)
            validator = AnswerValidator(o.schema_file)
            ratings = compare(read_ratings(self.settings))
            served: ServedEvaluation | None = None
            if self.ollama_client is None:
                replies = generate_with_transformers(
                    checkpoint, examples, max_new_tokens=o.max_new_tokens, batch_size=o.batch_size
                )
                metrics = evaluate(examples, replies, tolerance=o.tolerance, validator=validator)
                # The ratings are of what serves now, not of this candidate: shown, not gated on.
                decision = decide(metrics, o.thresholds)
            else:
                gguf = export_gguf(checkpoint, work / "gguf" / GGUF_NAME, name=model)
                current = DeploymentLog(self.settings, model).current()
                served = evaluate_candidate(
                    self.ollama_client,
                    examples,
                    gguf.path,
                    ollama_name=o.ollama_name,
                    base_name=o.base_name,
                    champion_name=current.ollama_name if current else None,
                    validator=validator,
                    tolerance=o.tolerance,
                    max_new_tokens=o.max_new_tokens,
                    ratings=ratings,
                    alpha=o.champion_alpha,
                    ollama_parameters=o.ollama_parameters,
                )
                metrics = served.metrics
                decision = decide(metrics, o.thresholds, champion=served.comparison)
            write_report(
                metrics,
                work / "eval",
                title=f"{model}: evaluation of {request_id}",
                decision=decision,
                ratings=ratings,
                served=served,
            )
            report_uri = artifacts.upload_dir(work / "eval", "eval") + "/report.md"
            eval_record = eval_report_record(
                metrics, decision, ratings, request_id, model, report_uri
            )
            self.producer.send_and_wait(TRAINING_RESULTS, EVAL_REPORT, model, eval_record)
            log.info("evaluated", request_id=request_id, passed=decision.passed, report=report_uri)
            deployed = None
            if decision.passed and served is not None:
                gguf_uri = artifacts.upload_dir(work / "gguf", "gguf") + f"/{GGUF_NAME}"
                deployed = promote(
                    self.settings,
                    self.ollama_client,
                    served,
                    ollama_name=o.ollama_name,
                    request_id=request_id,
                    model=model,
                    gguf_uri=gguf_uri,
                    manifest_uri=completed["manifest_uri"],
                    eval_report_uri=report_uri,
                    reason=decision.summary(),
                    producer=self.producer,
                )
        return Released(metrics, decision, eval_record, deployed)


def evaluate_served(
    settings: KafkaSettings,
    local: LocalSettings,
    completed: Record,
    name: str,
    client: Any,
    options: ReleaseSettings,
    out: Path | None = None,
) -> Released:
    """Evaluate model ``name`` as Ollama serves it on ``completed``'s held-out split; emit
    EvalReport. Gated with the A/B ratings too: unlike a candidate's, they are about this model.
    """
    from tier3.streams.backend.router import ollama_chat

    manifest = read_json(completed["manifest_uri"])
    examples = held_out_from_traces(manifest, read_traces(settings).traces)
    examples = examples[: options.max_examples] if options.max_examples else examples
    chat = ollama_chat(client)  # asked with each trace's recorded messages, never re-rendered
    replies = replies_from(lambda messages: chat(name, messages), examples)
    validator = AnswerValidator(options.schema_file)
    metrics = evaluate(examples, replies, tolerance=options.tolerance, validator=validator)
    ratings = compare(read_ratings(settings))
    decision = decide(metrics, options.thresholds, ratings)
    folder = out or Path(tempfile.mkdtemp(prefix="tier3-eval-"))
    title = f"{name} (served): evaluation"
    write_report(metrics, folder, title=title, decision=decision, ratings=ratings)
    run = RunArtifacts(local.object_root, completed["model"], completed["request_id"])
    report_uri = run.upload_dir(folder, f"eval-served-{name}") + "/report.md"
    record = eval_report_record(
        metrics, decision, ratings, completed["request_id"], completed["model"], report_uri
    )
    EventProducer(settings).send_and_wait(TRAINING_RESULTS, EVAL_REPORT, completed["model"], record)
    return Released(metrics, decision, record, None)


def eval_report_record(
    metrics: EvalMetrics,
    decision: GateDecision,
    ratings: Any,
    request_id: str,
    model: str,
    report_uri: str,
) -> Record:
    """The EvalReport event of an evaluation."""
    return {
        "request_id": request_id,
        "model": model,
        "created_at": int(time.time() * 1000),
        "examples": metrics.examples,
        "json_validity_rate": metrics.json_validity_rate,
        "score_match_rate": metrics.score_match_rate,
        "selection_agreement": metrics.selection_agreement,
        "student_latency_p50_ms": metrics.student_latency_p50_ms,
        "student_latency_p95_ms": metrics.student_latency_p95_ms,
        "teacher_latency_p50_ms": metrics.teacher_latency_p50_ms,
        "teacher_latency_p95_ms": metrics.teacher_latency_p95_ms,
        "rating_by_variant": ratings.rating_by_variant if ratings is not None else {},
        "rating_p_value": ratings.p_value if ratings is not None else None,
        "passed": decision.passed,
        "reasons": decision.reasons,
        "report_uri": report_uri,
    }


def eval_reports(settings: KafkaSettings, timeout: float = 30.0) -> dict[str, Record]:
    """The latest EvalReport of each request id on training-results."""
    codec = codec_of(settings)
    found: dict[str, Record] = {}
    for msg in read_to_end(settings, TRAINING_RESULTS, timeout):
        try:
            decoded = codec.decode(msg.value())
        except DecodeError:
            continue
        if decoded.name == EVAL_REPORT:
            found[decoded.record["request_id"]] = decoded.record
    return found


class ReleaseConsumer:
    """The release stage as a consumer group on training-results."""

    def __init__(self, release: Release, group: str = "tier3-release") -> None:
        self.release = release
        self.settings = release.settings
        self.codec = codec_of(self.settings)
        # An evaluation on a CPU can take longer than the default 5 minutes between polls.
        self.consumer = consumer(self.settings, group, **{"max.poll.interval.ms": 3_600_000})
        self.consumer.subscribe([self.settings.topic(TRAINING_RESULTS)])

    def run(self, stop: threading.Event, max_runs: int | None = None) -> int:
        done = 0
        try:
            while not stop.is_set() and (max_runs is None or done < max_runs):
                msg = self.consumer.poll(0.5)
                if msg is None or msg.error():
                    continue
                done += self._handle(msg)
                self.consumer.commit(message=msg, asynchronous=False)
        finally:
            self.consumer.close()
        return done

    def _handle(self, msg: Message) -> int:
        try:
            decoded = self.codec.decode(msg.value())
        except DecodeError as exc:
            send_dead_letter(self.release.producer, msg, str(exc), "DecodeError", "release")
            self.release.producer.flush()
            return 0
        if decoded.name != TRAINING_COMPLETED:
            return 0
        request_id = decoded.record["request_id"]
        if request_id in eval_reports(self.settings):
            log.info("already evaluated", request_id=request_id)
            return 0
        self.release.handle(decoded.record)
        return 1
