"""How every tier3 command prints: results on stdout, progress and errors on stderr.

A command's result is a table for people or, with ``--json``, plain JSON for scripts (never
wrapped or coloured, so ``jq`` can read it). Everything else a command says goes to stderr, so a
script that reads stdout gets only the result.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from confluent_kafka import KafkaException
from rich.console import Console

console = Console(stderr=True)
out = Console()

JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print JSON (for scripts) instead of tables.")
]


def fail(message: str, code: int = 1) -> typer.Exit:
    """Say ``message`` as one line on stderr; the ``typer.Exit`` to raise for exit ``code``."""
    console.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


def print_json(data: Any) -> None:
    """``data`` as indented JSON on stdout (plain print: rich would wrap long lines)."""
    print(json.dumps(data, indent=2, default=str))


@contextmanager
def operator_errors(*expected: type[Exception]) -> Iterator[None]:
    """Turn the errors an operator can act on into one line and exit code 1."""
    try:
        yield
    except (KafkaException, ValueError, *expected) as exc:
        raise fail(str(exc)) from exc
