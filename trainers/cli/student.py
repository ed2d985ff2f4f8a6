"""``tier3 student``: commands about the student base model itself."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

student_app = typer.Typer(help="Build or inspect the student's base model.", no_args_is_help=True)


@student_app.command("build-tiny")
def build_tiny(
    path: Annotated[Path, typer.Argument(help="Folder to write the model and tokenizer to.")],
    seed: Annotated[int, typer.Option(help="Seed of the random weights.")] = 0,
) -> None:
    """Build the tiny offline student (LLaMA architecture, random weights, a tokenizer trained
    here): what the demo and the tests fine-tune on a CPU. Nothing is downloaded."""
    from tier3.trainers.training.tiny_model import build_tiny_student

    typer.echo(build_tiny_student(path, seed=seed))


def register(app: typer.Typer, run_app: typer.Typer) -> None:
    app.add_typer(student_app, name="student")
