"""The trainer end to end on a CPU: real broker, tiny offline student, real TRL + PEFT training.

One module-scoped run (a TrainingRequested consumed by the trainer group) feeds several tests:
the result event, the committed offset, the loss, the saved adapter, a re-delivery. Other tests
cover what goes wrong: too few traces, a missing base model, an undecodable request.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from tier3.schemas.registry import TRAINING_COMPLETED, TRAINING_FAILED
from tier3.streams.kafka.events import EventProducer
from tier3.streams.kafka.settings import LocalSettings
from tier3.streams.kafka.topics import TRACES, TRAINING_REQUESTS, TRAINING_RESULTS

from tests.support.broker import fresh_settings
from tests.support.kafka_reading import read_all, read_events
from tests.support.trainer_harness import (
    OFFLINE_ENV,
    TINY_CACHE,
    publish_request,
    publish_traces,
    request,
    tiny_config,
)

pytest.importorskip("trl")
pytestmark = pytest.mark.train
os.environ.update(OFFLINE_ENV)

MODEL = "cc-widget-selector"


@pytest.fixture(scope="module")
def student() -> Path:
    from tier3.trainers.training.tiny_model import cached_tiny_student

    return cached_tiny_student(TINY_CACHE)


def consume(settings, local, config, max_requests=1, linger_s=0.0, **overrides):
    """Run the trainer group in this process until it has handled ``max_requests``.

    ``linger_s`` keeps each request's worker busy that much longer after its real run, so the
    run outlasts a short max.poll.interval.ms on a machine of any speed.
    """
    from tier3.trainers.training.consumer import TrainerConsumer
    from tier3.trainers.training.run import TrainingRun

    class LongerRun(TrainingRun):
        def handle(self, request):
            outcome = super().handle(request)
            time.sleep(linger_s)
            return outcome

    worker = TrainerConsumer(
        settings, LongerRun(settings, local, config), group=group_of(settings), **overrides
    )
    stop = threading.Event()
    timer = threading.Timer(240, stop.set)  # a hung test fails instead of blocking the suite
    timer.start()
    try:
        worker.run(stop, max_requests=max_requests)
    finally:
        timer.cancel()
    return worker


def group_of(settings) -> str:
    """A group per test: concurrent sessions on the shared broker must not rebalance each other."""
    return f"trainers-{settings.topic_prefix}"


def committed_offset(settings) -> int:
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": settings.bootstrap_servers, "group.id": group_of(settings)})
    try:
        tp = TopicPartition(settings.topic(TRAINING_REQUESTS), 0)
        return c.committed([tp], timeout=10)[0].offset
    finally:
        c.close()


@pytest.fixture(scope="module")
def trained(broker, student, tmp_path_factory):
    """One request trained through the consumer group, with a short max.poll.interval."""
    settings = fresh_settings(broker)
    home = tmp_path_factory.mktemp("home")
    local = LocalSettings(home=home)
    config = tiny_config(student, home / "training", max_steps=36, save_steps=12)
    traces = publish_traces(settings, 40)
    # A second, newer version of one trace (the latest wins) and a deleted one (left out).
    newer = dict(
        traces[0], teacher_thinking="Revised reasoning.", created_at=traces[0]["created_at"] + 1
    )
    producer = EventProducer(settings)
    producer.send(TRACES, "Trace", newer["query_id"], newer)
    producer.send_tombstone(TRACES, traces[1]["query_id"])
    assert producer.flush(30) == 0
    req = request(MODEL, [t["query_id"] for t in traces])
    publish_request(settings, req)
    # Training takes well over 6 s here: without pause-and-poll the member would be evicted.
    started = time.monotonic()
    # The worker stays busy for over 8 s (the run, then 8 s more), beyond the 6 s allowed between
    # polls: without pause-and-poll the member would be evicted.
    worker = consume(
        settings,
        local,
        config,
        linger_s=8.0,
        **{"max.poll.interval.ms": 6000, "session.timeout.ms": 6000},
    )
    elapsed = time.monotonic() - started
    return {
        "settings": settings,
        "local": local,
        "config": config,
        "request": req,
        "traces": traces,
        "worker": worker,
        "elapsed": elapsed,
    }


def test_request_ends_in_training_completed_with_artefacts(trained):
    from tier3.trainers.artifacts import RunArtifacts

    events = read_events(trained["settings"], TRAINING_RESULTS)
    assert [name for name, _ in events] == [TRAINING_COMPLETED]
    done = events[0][1]
    assert done["request_id"] == trained["request"]["request_id"]
    assert done["train_examples"] + done["eval_examples"] == 39  # one of 40 was deleted
    assert done["eval_examples"] > 0
    assert done["metrics"]["global_step"] == 36
    assert "eval_loss" in done["metrics"]
    artifacts = RunArtifacts(trained["local"].object_root, MODEL, done["request_id"])
    assert artifacts.completed() == done
    assert Path(done["adapter_uri"].removeprefix("file://"), "adapter_config.json").is_file()


def test_offset_committed_and_member_never_evicted(trained):
    # Not a speed check: without this the test would not show what it claims.
    assert trained["elapsed"] > 6.0, "the run must outlast max.poll.interval.ms"
    assert committed_offset(trained["settings"]) == 1
    # One assignment at start; an eviction during the run would have caused a second one.
    assert trained["worker"].rebalances == 1


def test_manifest_records_split_latest_trace_and_deleted_one(trained):
    import json

    from tier3.trainers.training.dataset import split_of

    done = read_events(trained["settings"], TRAINING_RESULTS)[0][1]
    manifest = json.loads(Path(done["manifest_uri"].removeprefix("file://")).read_text())
    deleted = trained["traces"][1]["query_id"]
    assert manifest["excluded"] == [
        {"query_id": deleted, "reason": "no live trace (deleted or missing)"}
    ]
    by_id = {e["query_id"]: e for e in manifest["examples"]}
    assert by_id[trained["traces"][0]["query_id"]]["trace_created_at"] == (
        trained["traces"][0]["created_at"] + 1
    )
    for query_id, entry in by_id.items():
        assert entry["split"] == split_of(query_id, 0.2)


def test_loss_goes_down(trained):
    metrics = read_events(trained["settings"], TRAINING_RESULTS)[0][1]["metrics"]
    assert metrics["last_logged_loss"] < metrics["first_logged_loss"]


def test_saved_adapter_loads_with_stock_peft_and_beats_the_base(trained):
    import torch
    from peft import PeftModel
    from tier3.trainers.training.dataset import to_messages
    from transformers import AutoModelForCausalLM, AutoTokenizer

    done = read_events(trained["settings"], TRAINING_RESULTS)[0][1]
    base_path = trained["config"].base_model
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    base = AutoModelForCausalLM.from_pretrained(base_path)
    held_out = [t for t in trained["traces"][2:] if _split(t) == "eval"]
    batch = [
        tokenizer.apply_chat_template(
            to_messages(t), return_dict=True, return_assistant_tokens_mask=True
        )
        for t in held_out
    ]

    def assistant_loss(model) -> float:
        losses = []
        with torch.no_grad():
            for item in batch:
                ids = torch.tensor([item["input_ids"]])
                labels = ids.clone()
                labels[0, torch.tensor(item["assistant_masks"]) == 0] = -100
                losses.append(model(input_ids=ids, labels=labels).loss.item())
        return sum(losses) / len(losses)

    before = assistant_loss(base)
    tuned = PeftModel.from_pretrained(base, done["adapter_uri"].removeprefix("file://"))
    assert assistant_loss(tuned) < before
    prompt = tokenizer.apply_chat_template(
        to_messages(held_out[0])[:1],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = tuned.generate(**prompt, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > prompt["input_ids"].shape[1]


def _split(trace) -> str:
    from tier3.trainers.training.dataset import split_of

    return split_of(trace["query_id"], 0.2)


def test_redelivered_request_is_not_trained_twice(trained):
    publish_request(trained["settings"], trained["request"])
    worker = consume(trained["settings"], trained["local"], trained["config"])
    assert [o.trained for o in worker.outcomes] == [False]
    events = read_events(trained["settings"], TRAINING_RESULTS)
    assert [name for name, _ in events] == [TRAINING_COMPLETED]  # no second result either
    assert committed_offset(trained["settings"]) == 2


def test_too_few_traces_fail_clearly_and_write_nothing_as_done(kafka, student, tmp_path):
    from tier3.trainers.artifacts import RunArtifacts

    local = LocalSettings(home=tmp_path)
    traces = publish_traces(kafka, 5)
    req = request(MODEL, [t["query_id"] for t in traces] + ["no-such-query"])
    publish_request(kafka, req)
    consume(kafka, local, tiny_config(student, tmp_path / "training"))
    [(name, failed)] = read_events(kafka, TRAINING_RESULTS)
    assert name == TRAINING_FAILED
    assert failed["stage"] == "dataset"
    assert "at least 8 are needed" in failed["reason"]
    assert RunArtifacts(local.object_root, MODEL, req["request_id"]).completed() is None


def test_missing_base_model_fails_clearly(kafka, tmp_path):
    local = LocalSettings(home=tmp_path)
    traces = publish_traces(kafka, 20)
    publish_request(kafka, request(MODEL, [t["query_id"] for t in traces]))
    consume(kafka, local, tiny_config(tmp_path / "no-such-model", tmp_path / "training"))
    [(name, failed)] = read_events(kafka, TRAINING_RESULTS)
    assert name == TRAINING_FAILED
    assert failed["stage"] == "model"
    assert "no-such-model" in failed["reason"]


def test_undecodable_request_goes_to_dead_letters_and_the_consumer_goes_on(kafka, tmp_path):
    from tier3.streams.kafka.dead_letters import DeadLetter

    producer = EventProducer(kafka)
    producer.raw.produce(kafka.topic(TRAINING_REQUESTS), b"not avro", b"m")
    producer.flush(10)
    traces = publish_traces(kafka, 3)
    publish_request(kafka, request(MODEL, [t["query_id"] for t in traces]))
    consume(kafka, LocalSettings(home=tmp_path), tiny_config(tmp_path / "x", tmp_path / "t"))
    [letter] = read_all(kafka, TRAINING_REQUESTS + ".dlq")
    assert letter.value == b"not avro"
    assert DeadLetter(
        letter.key, letter.value, {k: v.decode() for k, v in letter.headers.items()}
    ).reason
    assert [name for name, _ in read_events(kafka, TRAINING_RESULTS)] == [TRAINING_FAILED]
    assert committed_offset(kafka) == 2


def test_merged_weights_on_request_load_as_a_plain_model(kafka, student, tmp_path):
    from tier3.trainers.training.run import TrainingRun
    from transformers import AutoModelForCausalLM, AutoTokenizer

    traces = publish_traces(kafka, 20)
    config = tiny_config(student, tmp_path / "training", max_steps=2, merge_weights=True)
    outcome = TrainingRun(kafka, LocalSettings(home=tmp_path), config).handle(
        request(MODEL, [t["query_id"] for t in traces])
    )
    assert outcome.event == TRAINING_COMPLETED, outcome.record
    merged = outcome.record["merged_uri"].removeprefix("file://")
    model = AutoModelForCausalLM.from_pretrained(merged)
    assert not any("lora" in name for name, _ in model.named_parameters())
    tokenizer = AutoTokenizer.from_pretrained(merged)
    inputs = tokenizer("Request: show revenue", return_tensors="pt")
    assert model.generate(**inputs, max_new_tokens=3, do_sample=False).shape[1] > 2


@pytest.mark.slow
def test_several_processes_train_under_torchrun(kafka, student, tmp_path):
    """nproc_per_node=2 runs the SFT step under torchrun (gloo DDP on this CPU)."""
    from tier3.trainers.training.run import TrainingRun

    traces = publish_traces(kafka, 30)
    config = tiny_config(student, tmp_path / "training", max_steps=3, nproc_per_node=2)
    outcome = TrainingRun(kafka, LocalSettings(home=tmp_path), config).handle(
        request(MODEL, [t["query_id"] for t in traces])
    )
    assert outcome.event == TRAINING_COMPLETED, outcome.record
    assert outcome.record["metrics"]["world_size"] == 2
    assert outcome.record["metrics"]["global_step"] == 3
    adapter = Path(outcome.record["adapter_uri"].removeprefix("file://"))
    assert (adapter / "adapter_config.json").is_file()


def test_packed_examples_never_see_each_other(student):
    """Padding-free packing puts several examples in one sequence; each must see only itself."""
    import torch
    from tier3.trainers.training.settings import TrainerSettings
    from tier3.trainers.training.sft import load_base

    model, _ = load_base(TrainerSettings(base_model=str(student)), "cpu")
    torch.manual_seed(1)
    with torch.no_grad():  # random weights near zero give near-uniform outputs: make them bolder
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.5)
    lengths = [37, 90, 5, 124]
    ids = torch.randint(10, 600, (1, sum(lengths)))
    positions = torch.cat([torch.arange(n) for n in lengths])[None]
    with torch.no_grad():
        packed = model(input_ids=ids, position_ids=positions, use_cache=False).logits
        alone = torch.cat(
            [model(input_ids=part, use_cache=False).logits for part in ids.split(lengths, dim=1)],
            dim=1,
        )
        together = model(input_ids=ids, use_cache=False).logits  # one long example, for contrast
    assert torch.allclose(packed, alone, atol=1e-4)
    assert not torch.allclose(together, alone, atol=1e-2)
