"""How every tier3 command prints: results on stdout, progress and errors on stderr.

A command's result is a table for people or, with ``--json``, plain JSON for scripts (never
wrapped or coloured, so ``jq`` can read it). Everything else a command says goes to stderr, so a
script that reads stdout gets only the result.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from rich.console import Console

console = Console(stderr=True)
out = Console()

JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print JSON (for scripts) instead of tables.")
]


def say_error(message: str) -> None:
    """``error: message`` as one line on stderr, however long (rich would wrap it)."""
    print(f"error: {' '.join(message.split())}", file=sys.stderr, flush=True)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Say ``message`` as one line on stderr; the ``typer.Exit`` to raise for exit ``code``."""
    say_error(message)
    return typer.Exit(code)


def print_json(data: Any) -> None:
    """``data`` as indented JSON on stdout (plain print: rich would wrap long lines)."""
    print(json.dumps(data, indent=2, default=str))
