"""Redaction: personal data and secrets never leave the capture consumer."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from tier3.consumers.redaction import Redactor
from tier3.consumers.settings import CaptureSettings
from tier3.streams.kafka.topics import TRACES

from tests.support.capture_harness import (
    build_worker,
    make_job,
    provider_settings,
    publish_jobs,
    run_until,
)
from tests.support.kafka_reading import read_all
from tests.support.servers import AnthropicServer, OllamaServer

SECRETS = {
    "email": "jane.doe+billing@example.co.uk",
    "phone": "+1 415-555-0132",
    "api_key": "sk-ant-api03-AbCdEfGhIjKlMnOpQrStUvWx",
    "aws": "AKIAIOSFODNN7EXAMPLE",
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mail jane.doe+billing@example.co.uk today", "mail [REDACTED:email] today"),
        ("call (415) 555-0132 now", "call [REDACTED:phone] now"),
        ("call +44 20 7946 0958", "call [REDACTED:phone]"),
        ("key sk-ant-api03-AbCdEfGhIjKlMnOpQrStUvWx", "key [REDACTED:api_key]"),
        ("aws AKIAIOSFODNN7EXAMPLE", "aws [REDACTED:api_key]"),
        ("gh ghp_abcdefghijklmnopqrstuvwxyz0123456789", "gh [REDACTED:api_key]"),
        ("auth: Bearer abc.def-ghi_jkl.mnopqrst", "auth: [REDACTED:bearer_token]"),
        ("password=hunter2hunter2", "[REDACTED:secret_assignment]"),
        ('{"contact": "a@b.io", "open": true}', '{"contact": "[REDACTED:email]", "open": true}'),
    ],
)
def test_defaults_mask_emails_phones_and_keys(text: str, expected: str):
    assert Redactor().redact(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "show revenue by region for the last 30 days",
        "order 12345678 cost 1234.50 on 2024-11-25 at 0.9 appropriateness",
        '{"widgets": ["bar_chart"], "primary_metric": "revenue", "appropriateness": 0.9}',
    ],
)
def test_ordinary_text_and_numbers_are_left_alone(text: str):
    assert Redactor().redact(text) == text


def test_configured_patterns_add_to_the_defaults_and_count(monkeypatch):
    monkeypatch.setenv("TIER3_REDACT_PATTERNS", json.dumps({"employee_id": r"EMP-\d{6}"}))
    settings = CaptureSettings()
    redactor = Redactor.configured(settings.redact_patterns, settings.redact_defaults)
    found: Counter[str] = Counter()
    out = redactor.redact("EMP-123456 wrote from a@b.io and EMP-654321", found)
    assert out == "[REDACTED:employee_id] wrote from [REDACTED:email] and [REDACTED:employee_id]"
    assert found == {"employee_id": 2, "email": 1}


def test_defaults_can_be_turned_off():
    redactor = Redactor.configured({"ticket": r"T-\d+"}, use_defaults=False)
    assert redactor.redact("T-42 from a@b.io") == "[REDACTED:ticket] from a@b.io"


def test_a_bad_pattern_is_a_clear_error():
    with pytest.raises(ValueError, match="'broken' is not a valid regex"):
        Redactor({"broken": "(unclosed"})


def test_no_secret_reaches_the_store_or_the_topic(kafka, tmp_path: Path):
    query = f"show revenue total for {SECRETS['email']}, call {SECRETS['phone']}"
    context = {"page": "sales", "note": f"key {SECRETS['api_key']} / {SECRETS['aws']}"}
    job = make_job(1, query=query, context=context)
    # A teacher that echoes the query in its thinking, as real ones do.
    with AnthropicServer(reply=lambda prompt, body: (f"They asked: {prompt}", '{"x": 1}')) as t, \
            OllamaServer() as s:
        publish_jobs(kafka, [job])
        root = (tmp_path / "objects").as_uri()
        worker = build_worker(kafka, provider_settings(t.url, s.url), root)
        run_until(worker, lambda: worker.traced >= 1)
        assert SECRETS["email"] in t.requests[0]["messages"][0]["content"]  # the teacher saw it

    stored = b"".join(p.read_bytes() for p in (tmp_path / "objects").rglob("*.json"))
    produced = b"".join(r.value for r in read_all(kafka, TRACES))
    for secret in SECRETS.values():
        assert secret.encode() not in stored
        assert secret.encode() not in produced
    document = json.loads(stored)
    assert "[REDACTED:email]" in document["query"] and "[REDACTED:phone]" in document["query"]
    assert "[REDACTED:api_key]" in document["context"]
    assert "[REDACTED:email]" in document["teacher_thinking"]
    assert json.loads(document["context"])["page"] == "sales"  # still a JSON document
    assert document["redactions"]["api_key"] >= 2


def test_redaction_can_be_switched_off(kafka, tmp_path: Path):
    job = make_job(1, query=f"show orders total for {SECRETS['email']}")
    with AnthropicServer() as t, OllamaServer() as s:
        publish_jobs(kafka, [job])
        root = (tmp_path / "objects").as_uri()
        worker = build_worker(kafka, provider_settings(t.url, s.url, redact=False), root)
        run_until(worker, lambda: worker.traced >= 1)
    stored = b"".join(p.read_bytes() for p in (tmp_path / "objects").rglob("*.json"))
    assert SECRETS["email"].encode() in stored
