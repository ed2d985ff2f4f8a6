"""`tier3 simulate`: realistic traffic, and the same seed gives the same events."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tier3.streams.demo.simulate import simulate
from tier3.streams.local.kafka_broker import LocalBroker
from tier3.tasks import widgets

from tests.support.broker import fresh_settings
from tests.support.kafka_reading import read_all


def _simulate_into_fresh_topics(broker: LocalBroker, seed: int) -> dict[str, list]:
    settings = fresh_settings(broker)
    env = {
        **os.environ,
        "TIER3_BOOTSTRAP_SERVERS": broker.bootstrap,
        "TIER3_TOPIC_PREFIX": settings.topic_prefix,
    }
    done = subprocess.run(
        [sys.executable, "-m", "tier3.streams", "simulate", "--events", "80", "--seed", str(seed)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "published 80 experiences" in done.stdout
    return {
        topic: sorted((m.key, m.value) for m in read_all(settings, topic))
        for topic in ("experiences", "feedback")
    }


def test_same_seed_publishes_the_same_events(broker: LocalBroker) -> None:
    first = _simulate_into_fresh_topics(broker, seed=11)
    second = _simulate_into_fresh_topics(broker, seed=11)
    other = _simulate_into_fresh_topics(broker, seed=12)
    assert len(first["experiences"]) == 80
    assert 0 < len(first["feedback"]) < 80  # some queries are never rated
    assert first == second
    assert first["experiences"] != other["experiences"]


def test_traffic_looks_like_a_backends() -> None:
    events = list(simulate(300, seed=2))
    experiences = {e.key: e for e in events if e.event == "Experience"}
    feedback = [e for e in events if e.event == "Feedback"]
    assert len(experiences) == 300
    for f in feedback:  # feedback comes after its experience, within 30 simulated seconds
        assert 1_000 <= f.at_ms - experiences[f.key].at_ms <= 30_000
    assert [e.at_ms for e in events] == sorted(e.at_ms for e in events)
    confidences = [e.record["confidence"] for e in experiences.values()]
    assert min(confidences) < 0.5 < 0.9 < max(confidences)
    for e in experiences.values():
        assert widgets.parse_answer(e.record["response"]) is not None
        assert json.loads(e.record["context"])["page"] in widgets.PAGES
