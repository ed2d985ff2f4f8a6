"""The trainer's and the release stage's settings as an operator meets them: one field per
setting, read by ``--help``, overridden by a flag, and passed to TRL's SFTConfig as it is."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from tier3.streams.cli.settings_options import settings_options
from tier3.trainers.training.settings import TrainerSettings
from typer.testing import CliRunner


def _words(output: str) -> str:
    """The help text without rich's box drawing and line wrapping."""
    return " ".join(output.replace("│", " ").split())


def _cli() -> typer.Typer:
    from tier3.streams.cli import main as cli

    cli._load_plugins()
    return cli.app


def test_help_reads_each_option_from_its_field():
    shown = CliRunner().invoke(_cli(), ["train", "--help"], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    text = _words(shown.output)
    assert "--max-length" in text and "env TIER3_TRAIN_MAX_LENGTH; default 2048" in text
    assert "--packing --no-packing" in text.replace("/", " ")
    assert "env TIER3_STUDENT_MODEL; default cc-widget-selector" in text
    deploy = CliRunner().invoke(_cli(), ["deploy", "--help"], env={"COLUMNS": "200"})
    assert "env TIER3_RELEASE_OLLAMA_NAME; default cc-widget-selector-v2" in _words(deploy.output)


def test_a_flag_overrides_the_variable_which_overrides_the_default(monkeypatch):
    seen: list[TrainerSettings] = []
    app = typer.Typer()

    @app.command()
    @settings_options(TrainerSettings, ["max_length", "lora_r", "packing"])
    def show(settings: TrainerSettings) -> None:
        seen.append(settings)

    @app.command()
    def other() -> None: ...

    monkeypatch.setenv("TIER3_TRAIN_MAX_SEQ_LENGTH", "512")  # the older variable still counts
    monkeypatch.setenv("TIER3_TRAIN_LORA_R", "4")
    done = CliRunner().invoke(app, ["show", "--lora-r", "2", "--no-packing"])
    assert done.exit_code == 0, done.output
    assert (seen[0].max_length, seen[0].lora_r, seen[0].packing) == (512, 2, False)


def test_sft_config_is_the_settings_passed_through(monkeypatch, tmp_path: Path):
    pytest.importorskip("trl")
    from tier3.trainers.training.sft import sft_config

    monkeypatch.setenv(
        "TIER3_TRAIN_SFT", '{"torch_empty_cache_steps": 5, "lr_scheduler_type": "linear"}'
    )
    settings = TrainerSettings(max_length=300, learning_rate=1e-3, warmup_steps=0.2, max_steps=7)
    built = sft_config(settings, tmp_path, "cpu")
    for name, value in settings.resolved("cpu").sft_arguments().items():
        assert getattr(built, name) == value, name
    assert (built.max_length, built.max_steps, built.optim) == (300, 7, "adamw_torch")
    assert built.torch_empty_cache_steps == 5 and built.lr_scheduler_type == "linear"  # extras win
    assert built.assistant_only_loss and built.report_to == []


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        ({"no_such_field": 1}, "not fields of TRL's SFTConfig"),
        ({"learning_rate": 1.0}, "set TIER3_TRAIN_LEARNING_RATE instead"),
    ],
)
def test_an_sft_extra_trl_lacks_or_tier3_owns_is_refused(tmp_path: Path, extra, says):
    pytest.importorskip("trl")
    from tier3.trainers.training.sft import sft_config

    with pytest.raises(ValueError, match=says):
        sft_config(TrainerSettings(sft=extra), tmp_path, "cpu")
