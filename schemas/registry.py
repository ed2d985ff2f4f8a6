"""The Avro contracts: every event on every tier3 topic is one of these records.

Schemas live as ``avsc/<Name>.avsc`` (the current version) and ``avsc/history/<v>/<Name>.avsc``
(every released version, kept so that readers of today can prove they still read what writers of
yesterday wrote). They are parsed once, at import, and indexed by their CRC-64-AVRO fingerprint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from fastavro import parse_schema
from fastavro.schema import fingerprint, to_parsing_canonical_form

EXPERIENCE = "Experience"
FEEDBACK = "Feedback"
CAPTURE_JOB = "CaptureJob"
TRACE = "Trace"
TRAINING_REQUESTED = "TrainingRequested"
TRAINING_COMPLETED = "TrainingCompleted"
TRAINING_FAILED = "TrainingFailed"
EVAL_REPORT = "EvalReport"
MODEL_DEPLOYED = "ModelDeployed"

EVENT_NAMES: tuple[str, ...] = (
    EXPERIENCE,
    FEEDBACK,
    CAPTURE_JOB,
    TRACE,
    TRAINING_REQUESTED,
    TRAINING_COMPLETED,
    TRAINING_FAILED,
    EVAL_REPORT,
    MODEL_DEPLOYED,
)


@dataclass(frozen=True)
class SchemaVersion:
    """One version of one event's schema."""

    name: str
    version: str  # "current" or the history folder's name
    raw: dict[str, Any]
    parsed: dict[str, Any]
    canonical: str
    fingerprint: bytes  # 8 bytes, little-endian, as single-object encoding frames it

    @property
    def fullname(self) -> str:
        return f"{self.raw.get('namespace', '')}.{self.name}".lstrip(".")


def _load(text: str, name: str, version: str) -> SchemaVersion:
    raw = json.loads(text)
    parsed = parse_schema(raw)  # marked parsed: the writer then skips re-parsing per call
    canonical = to_parsing_canonical_form(raw)
    # fastavro returns the CRC-64-AVRO fingerprint as big-endian hex; the wire wants little-endian.
    fp = bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))[::-1]
    return SchemaVersion(name, version, raw, parsed, canonical, fp)


@cache
def current(name: str) -> SchemaVersion:
    """The current version of an event's schema."""
    if name not in EVENT_NAMES:
        raise KeyError(f"unknown event type {name!r}; known: {', '.join(EVENT_NAMES)}")
    text = resources.files(__package__).joinpath("avsc", f"{name}.avsc").read_text()
    return _load(text, name, "current")


@cache
def history(name: str) -> tuple[SchemaVersion, ...]:
    """Every released version of an event's schema, oldest first."""
    root = resources.files(__package__).joinpath("avsc", "history")
    versions = sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: int(p.name))
    found = []
    for folder in versions:
        file = folder.joinpath(f"{name}.avsc")
        if file.is_file():
            found.append(_load(file.read_text(), name, folder.name))
    return tuple(found)


@cache
def by_fingerprint() -> dict[bytes, SchemaVersion]:
    """All known writer schemas (current and history), by fingerprint."""
    index: dict[bytes, SchemaVersion] = {}
    for name in EVENT_NAMES:
        for version in (*history(name), current(name)):
            index.setdefault(version.fingerprint, version)
    # Current versions win where a history version is byte-identical to them.
    for name in EVENT_NAMES:
        index[current(name).fingerprint] = current(name)
    return index
