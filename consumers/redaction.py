"""Redaction: personal data and secrets are masked before a trace leaves the capture consumer.

Traces become training data and sit in object storage and on a topic many people can read, so
the query, its context, the teacher's thinking and both answers pass through ``Redactor`` before
they are written. Each match is replaced by ``[REDACTED:<name>]``, which keeps a JSON document
valid (it has no quotes or backslashes) and tells a reader what kind of thing was there.

The defaults cover what leaks most often: email addresses, phone numbers, and API keys and
tokens (Anthropic/OpenAI ``sk-`` keys, AWS access key ids, GitHub and Slack tokens, bearer tokens,
JWTs, and ``api_key=...``-style assignments). Sites add their own patterns by configuration
(``TIER3_REDACT_PATTERNS='{"employee_id": "EMP-\\\\d{6}"}'``). Patterns are tried in order, secrets
first, so a key that looks like a phone number is masked as a key.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

DEFAULT_PATTERNS: dict[str, str] = {
    "api_key": (
        r"\b(?:sk-(?:ant-)?[A-Za-z0-9_-]{16,}"  # Anthropic, OpenAI
        r"|AKIA[0-9A-Z]{16}"  # AWS access key id
        r"|gh[pousr]_[A-Za-z0-9]{30,}"  # GitHub
        r"|xox[abposr]-[A-Za-z0-9-]{10,}"  # Slack
        r"|AIza[0-9A-Za-z_-]{35})"  # Google
    ),
    "jwt": r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",
    "bearer_token": r"(?i)\bbearer\s+[A-Za-z0-9._~+/-]{16,}=*",
    "secret_assignment": (
        r"(?i)\b(?:api[_-]?key|access[_-]?token|secret|password|passwd|token)"
        r"(?:\s*[:=]\s*|\s+is\s+)[^\s\"',;]{6,}"
    ),
    "email": r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b",
    # Separators are required between groups, so plain numbers (ids, amounts) are left alone.
    "phone": (
        r"(?<![\w.])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{2,4}\)\s?|\d{2,4}[\s.-])\d{3,4}[\s.-]\d{3,4}(?![\w.])"
    ),
}


@dataclass
class Redactor:
    """Masks every pattern's matches; counts what it masked, by pattern name."""

    patterns: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_PATTERNS))

    def __post_init__(self) -> None:
        compiled = []
        for name, pattern in self.patterns.items():
            try:
                compiled.append((name, re.compile(pattern)))
            except re.error as exc:
                raise ValueError(f"redaction pattern {name!r} is not a valid regex: {exc}") from exc
        self._compiled = compiled

    @classmethod
    def configured(cls, extra: Mapping[str, str], use_defaults: bool = True) -> Redactor:
        base = dict(DEFAULT_PATTERNS) if use_defaults else {}
        return cls({**base, **extra})

    def redact(self, text: str, found: Counter[str] | None = None) -> str:
        """``text`` with every match replaced by ``[REDACTED:<name>]``; counts go to ``found``."""
        for name, regex in self._compiled:
            text, n = regex.subn(f"[REDACTED:{name}]", text)
            if n and found is not None:
                found[name] += n
        return text
