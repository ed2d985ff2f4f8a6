"""Prometheus metrics of the capture consumers.

jobs/s is ``rate(tier3_capture_jobs_total[1m])``; the rest are read as they are. Latencies are
histograms with buckets from 50 ms to 2 min, since a teacher with thinking takes seconds.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120)

JOBS = Counter(
    "tier3_capture_jobs_total",
    "Capture jobs finished, by outcome (traced, dead_letter).",
    ["outcome"],
)
IN_FLIGHT = Gauge("tier3_capture_in_flight", "Capture jobs taken and not yet finished.")
PAUSED = Gauge("tier3_capture_paused", "1 while partitions are paused because the process is full.")
TEACHER_LATENCY = Histogram(
    "tier3_capture_teacher_latency_seconds",
    "Wall time of a teacher call that answered, SDK retries and rate-limit waits included.",
    ["provider"],
    buckets=_LATENCY_BUCKETS,
)
STUDENT_LATENCY = Histogram(
    "tier3_capture_student_latency_seconds",
    "Wall time of a student call that answered.",
    ["provider"],
    buckets=_LATENCY_BUCKETS,
)
SINK_LATENCY = Histogram(
    "tier3_capture_sink_latency_seconds",
    "Time until a trace write is confirmed: 'object' stored, 'topic' acknowledged by the broker.",
    ["sink"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5),
)
RETRIES = Counter(
    "tier3_capture_retries_total",
    "Retries: 'http' are SDK retries of a call (429/529/5xx), 'job' are whole-job attempts.",
    ["kind"],
)
DEAD_LETTERS = Counter(
    "tier3_capture_dead_letters_total",
    "Capture jobs sent to the dead-letter topic, by reason (undecodable, failed).",
    ["reason"],
)
TOKENS = Counter(
    "tier3_capture_tokens_total",
    "Tokens spent, by role (teacher, student) and direction (input, output).",
    ["role", "direction"],
)
RATE_LIMIT_WAIT = Counter(
    "tier3_capture_rate_limit_wait_seconds_total",
    "Seconds teacher calls waited for the client-side rate limit.",
)
STUDENT_ERRORS = Counter("tier3_capture_student_errors_total", "Student calls that failed.")
MALFORMED = Counter(
    "tier3_capture_teacher_malformed_total", "Teacher answers that were not the task's JSON."
)
REDACTIONS = Counter("tier3_capture_redactions_total", "Redacted matches, by pattern.", ["pattern"])
