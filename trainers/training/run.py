"""One training request, from its event to its result event: the path every trigger takes.

``tier3 run trainer`` (the consumer group) and ``tier3 train`` (the manual trigger) both call
``TrainingRun.handle``, which (``manual_request`` is what ``tier3 train`` asks for):

1. returns the stored result if the request is already done (its ``_COMPLETE`` marker exists),
   re-emitting it only when the training-results topic does not hold it yet: a request is
   trained once however often it is delivered;
2. reads the live traces and rebuilds the dataset from exactly the request's query_ids, and
   writes the manifest;
3. trains, resuming from the newest checkpoint of an earlier attempt (local, else the copy in
   object storage);
4. uploads manifest, adapter and (on request) merged weights, then writes ``_COMPLETE`` last;
5. emits TrainingCompleted, or TrainingFailed with the stage and reason, and waits for the
   broker's acknowledgement before returning (the consumer commits only after that).

Training on several GPUs runs the training step under ``torchrun`` (see ``sft_job``); the rest
stays in this process, so only one process talks to Kafka.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from confluent_kafka import KafkaException
from tier3.schemas import DecodeError
from tier3.schemas.registry import TRAINING_COMPLETED, TRAINING_FAILED, TRAINING_REQUESTED
from tier3.streams.kafka.events import EventProducer, codec_of
from tier3.streams.kafka.reader import read_to_end
from tier3.streams.kafka.settings import KafkaSettings, LocalSettings
from tier3.streams.kafka.topics import TRAINING_REQUESTS, TRAINING_RESULTS
from tier3.streams.processors.training_requests import MANUAL, training_request
from tier3.trainers.artifacts import RunArtifacts, latest_local_checkpoint
from tier3.trainers.training.dataset import BuiltDataset, build_dataset
from tier3.trainers.training.failures import TrainingError
from tier3.trainers.training.settings import TrainerSettings
from tier3.trainers.training.traces_source import read_traces

log = structlog.get_logger(__name__)


@dataclass
class Outcome:
    """What handling a request produced: the result event, and whether it trained now."""

    event: str  # TRAINING_COMPLETED or TRAINING_FAILED
    record: dict[str, Any]
    trained: bool


class TrainingRun:
    """Handles training requests for one trainer process."""

    def __init__(
        self,
        settings: KafkaSettings,
        local: LocalSettings,
        config: TrainerSettings,
        producer: EventProducer | None = None,
    ) -> None:
        self.settings = settings
        self.local = local
        self.config = config
        self.producer = producer or EventProducer(settings)
        self.work_root = config.work_dir or local.home / "training"

    def handle(self, request: dict[str, Any]) -> Outcome:
        """Do ``request`` once, emit its result event, and return it."""
        request_id, model = request["request_id"], request["model"]
        bound = log.bind(request_id=request_id, model=model)
        artifacts = RunArtifacts(self.local.object_root, model, request_id)
        done = artifacts.completed()
        if done is not None:
            if not self._result_published(request_id):
                self._emit(TRAINING_COMPLETED, done)
            bound.info("request already done; not training again", adapter=done["adapter_uri"])
            return Outcome(TRAINING_COMPLETED, done, trained=False)
        try:
            record = self._train(request, artifacts, bound)
            outcome = Outcome(TRAINING_COMPLETED, record, trained=True)
        except TrainingError as exc:
            outcome = Outcome(TRAINING_FAILED, self._failure(request, exc), trained=False)
        except Exception as exc:  # any other error still ends as a TrainingFailed
            bound.exception("training crashed")
            error = TrainingError("train", f"{type(exc).__name__}: {exc}", type(exc).__name__)
            outcome = Outcome(TRAINING_FAILED, self._failure(request, error), trained=False)
        self._emit(outcome.event, outcome.record)
        if outcome.event == TRAINING_FAILED:
            bound.error(
                "training failed", stage=outcome.record["stage"], reason=outcome.record["reason"]
            )
        else:
            bound.info("training completed", adapter=outcome.record["adapter_uri"])
        return outcome

    def _train(self, request: dict[str, Any], artifacts: RunArtifacts, bound: Any) -> dict:
        config = self.config
        try:
            snapshot = read_traces(self.settings)
        except (TimeoutError, KafkaException) as exc:
            raise TrainingError(
                "dataset", f"cannot read the traces topic: {exc}", type(exc).__name__
            ) from exc
        built = build_dataset(
            request, snapshot.traces, config.eval_share, config.base_model,
            thinking=config.thinking,
        )
        if len(built.train) < config.min_train_examples:
            raise TrainingError(
                "dataset",
                f"only {len(built.train)} training examples from {len(request['query_ids'])} "
                f"requested traces ({len(built.manifest['excluded'])} left out); at least "
                f"{config.min_train_examples} are needed (TIER3_TRAIN_MIN_TRAIN_EXAMPLES)",
            )
        run_dir = self.work_root / request["model"] / request["request_id"]
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "manifest.json").write_text(json.dumps(built.manifest, indent=2))
        resume_from = self._checkpoint_to_resume(run_dir, artifacts)
        bound.info(
            "training",
            train_examples=len(built.train),
            eval_examples=len(built.eval),
            resume_from=str(resume_from) if resume_from else None,
        )
        outcome = self._fit(built, run_dir, artifacts, resume_from)
        try:
            manifest_uri = artifacts.write_json("manifest.json", built.manifest)
            adapter_uri = artifacts.upload_dir(outcome["adapter_dir"], "adapter")
            merged_uri = (
                artifacts.upload_dir(outcome["merged_dir"], "merged")
                if outcome["merged_dir"]
                else None
            )
        except OSError as exc:
            raise TrainingError(
                "save", f"cannot write artefacts: {exc}", type(exc).__name__
            ) from exc
        record = {
            "request_id": request["request_id"],
            "model": request["model"],
            "completed_at": int(time.time() * 1000),
            "base_model": config.base_model,
            "adapter_uri": adapter_uri,
            "merged_uri": merged_uri,
            "manifest_uri": manifest_uri,
            "train_examples": len(built.train),
            "eval_examples": len(built.eval),
            "metrics": outcome["metrics"],
        }
        artifacts.mark_complete(record)
        return record

    def _fit(
        self, built: BuiltDataset, run_dir: Path, artifacts: RunArtifacts, resume: Path | None
    ) -> dict[str, Any]:
        """Train in this process, or under torchrun when several GPUs are configured."""
        if self.config.nproc_per_node == 1:
            from tier3.trainers.training.sft import train

            out = train(built, self.config, run_dir, artifacts, resume)
            return {
                "adapter_dir": out.adapter_dir,
                "merged_dir": out.merged_dir,
                "metrics": out.metrics,
            }
        from tier3.trainers.training.sft_job import write_job

        job = write_job(run_dir, built, self.config, artifacts.uri, resume)
        command = [
            sys.executable, "-m", "torch.distributed.run",
            f"--nproc_per_node={self.config.nproc_per_node}",
            "-m", "tier3.trainers.training.sft_job", str(job),
        ]  # fmt: skip
        finished = subprocess.run(command, check=False)
        result_file = run_dir / "sft_outcome.json"
        if finished.returncode != 0 or not result_file.is_file():
            error = json.loads(result_file.read_text()) if result_file.is_file() else {}
            raise TrainingError(
                error.get("stage", "train"),
                error.get("reason", f"torchrun exited with status {finished.returncode}"),
                error.get("error_type", "ChildProcessError"),
            )
        out = json.loads(result_file.read_text())
        return {
            "adapter_dir": Path(out["adapter_dir"]),
            "merged_dir": Path(out["merged_dir"]) if out["merged_dir"] else None,
            "metrics": out["metrics"],
        }

    def _checkpoint_to_resume(self, run_dir: Path, artifacts: RunArtifacts) -> Path | None:
        local = latest_local_checkpoint(run_dir)
        remote = artifacts.latest_checkpoint()
        if remote is not None and (local is None or remote[0] > int(local.name.split("-")[-1])):
            # Another machine got further than this one: continue from its checkpoint.
            target = run_dir / Path(remote[1]).name
            shutil.rmtree(target, ignore_errors=True)
            return artifacts.download_checkpoint(remote[1], run_dir)
        return local

    def _failure(self, request: dict[str, Any], error: TrainingError) -> dict[str, Any]:
        return {
            "request_id": request["request_id"],
            "model": request["model"],
            "failed_at": int(time.time() * 1000),
            "stage": error.stage,
            "reason": error.reason,
            "error_type": error.error_type,
        }

    def _emit(self, event: str, record: dict[str, Any]) -> None:
        self.producer.send_and_wait(TRAINING_RESULTS, event, record["model"], record)

    def _result_published(self, request_id: str) -> bool:
        return any(
            name == TRAINING_COMPLETED and record["request_id"] == request_id
            for name, record in read_results(self.settings)
        )


@dataclass
class ManualRequest:
    """What ``tier3 train`` found: the request it would make, and whether there were enough."""

    request: dict[str, Any]
    enough: bool  # at least ``min_traces`` usable traces (or forced)


def manual_request(
    settings: KafkaSettings, trainer: TrainerSettings, force: bool = False
) -> ManualRequest:
    """The request ``tier3 train`` makes: every live trace whose teacher answer was valid.

    The same record (and id) the counter would make for these traces, so a manual run and a
    triggered one differ only in who asked.
    """
    traces = read_traces(settings).traces
    query_ids = sorted(q for q, t in traces.items() if t.get("teacher_answer_valid", True))
    request = training_request(trainer.student_model, query_ids, MANUAL)
    return ManualRequest(request, force or len(query_ids) >= trainer.min_traces)


def publish_request(settings: KafkaSettings, request: dict[str, Any]) -> None:
    """Put ``request`` on training-requests for the trainer group; return once acknowledged."""
    EventProducer(settings).send_and_wait(
        TRAINING_REQUESTS, TRAINING_REQUESTED, request["model"], request
    )


def read_results(settings: KafkaSettings, timeout: float = 30.0) -> list[tuple[str, dict]]:
    """Every training result now on the training-results topic, decoded, oldest first.

    Other events on that topic (EvalReport, ModelDeployed) and undecodable values are skipped.
    """
    codec = codec_of(settings)
    found: list[tuple[str, dict]] = []
    for msg in read_to_end(settings, TRAINING_RESULTS, timeout):
        try:
            decoded = codec.decode(msg.value(), expect=(TRAINING_COMPLETED, TRAINING_FAILED))
        except DecodeError:
            continue
        found.append((decoded.name, decoded.record))
    return found
