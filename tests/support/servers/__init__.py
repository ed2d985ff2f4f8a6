"""Fake provider servers on 127.0.0.1 that answer the Anthropic Messages API and Ollama's API.

The real ``anthropic`` and ``ollama`` SDKs talk to them over real HTTP, so tests exercise the
SDKs' own request building, parsing, retries and errors. Each server runs in-process on a thread
(a context manager exposing ``.url`` and ``.requests``) or as a script::

    python -m tests.support.servers anthropic --port 8701 --delay 1.0
    python -m tests.support.servers ollama --port 8702 --delay 0.2

Failures are injected with ``Fault`` (see ``tests.support.servers.fault``): HTTP 429 with
``retry-after``, 500, 529, or a malformed answer, for all requests or those whose prompt matches.
"""

from tests.support.servers.anthropic_api import AnthropicServer
from tests.support.servers.fault import Fault, FaultPlan
from tests.support.servers.ollama_api import OllamaServer
from tests.support.servers.widget_replies import MALFORMED_ANSWER

__all__ = ["MALFORMED_ANSWER", "AnthropicServer", "Fault", "FaultPlan", "OllamaServer"]
