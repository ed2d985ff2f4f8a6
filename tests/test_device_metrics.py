"""The trainer's GPU choices, checked on a CPU: the metrics kept on the device give TRL's loss
and metrics; Liger is on by default only where it can run; flex_attention batches have one
length."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.trainer_harness import TINY_CACHE, tiny_config

pytestmark = pytest.mark.train


@pytest.fixture(scope="module")
def student() -> Path:
    from tier3.trainers.training.tiny_model import cached_tiny_student

    return cached_tiny_student(TINY_CACHE)


def _examples(count: int) -> list[dict]:
    """Widget-task conversations as the dataset builder makes them from traces."""
    from tier3.schemas.registry import EXPERIENCE
    from tier3.streams.demo.simulate import simulate
    from tier3.trainers.training.dataset import to_messages

    from tests.support.trainer_harness import trace_record

    experiences = [e.record for e in simulate(3 * count, 3) if e.event == EXPERIENCE][:count]
    return [
        {"messages": to_messages(trace_record(r["query_id"], r["query"], r["context"], 0))}
        for r in experiences
    ]


def _trainers(student: Path, tmp_path: Path, **overrides):
    """Stock TRL's SFTTrainer and tier3's, on the same data and configuration."""
    from datasets import Dataset
    from tier3.trainers.training.device_metrics import DeviceMetricsSFTTrainer
    from tier3.trainers.training.sft import load_base, lora_config, sft_config
    from trl import SFTTrainer

    config = tiny_config(student, tmp_path, **overrides)
    rows = Dataset.from_list(_examples(12))
    made = []
    for cls in (SFTTrainer, DeviceMetricsSFTTrainer):
        model, tokenizer = load_base(config, "cpu")
        made.append(
            cls(
                model=model,
                args=sft_config(config, tmp_path / cls.__name__, "cpu"),
                train_dataset=rows,
                processing_class=tokenizer,
                peft_config=lora_config(config),
            )
        )
    return made


def _one_step_metrics(trainer, batch) -> tuple[float, dict[str, float]]:
    """The loss of one batch, and what the trainer's next log line adds for it."""
    import torch

    trainer.model.train()
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, dict(batch), num_items_in_batch=None)
    logs: dict[str, float] = {}
    trainer.log(logs)
    return float(loss), logs


@pytest.mark.parametrize("pad", [None, 512], ids=["padding-free", "padded-to-one-length"])
def test_metrics_kept_on_the_device_equal_trls(student, tmp_path, pad):
    extra = {"sft": {"pad_to_multiple_of": pad}} if pad else {}
    stock, ours = _trainers(student, tmp_path, **extra)
    batch = next(iter(ours.get_train_dataloader()))
    if pad:
        assert batch["input_ids"].shape[1] == pad  # the padding is there to be left out
    real = int((batch["labels"] != -100).sum())
    assert real > 0
    stock_loss, stock_logs = _one_step_metrics(stock, batch)
    our_loss, our_logs = _one_step_metrics(ours, batch)
    assert our_loss == pytest.approx(stock_loss, rel=1e-5)
    for key in ("entropy", "mean_token_accuracy"):
        assert our_logs[key] == pytest.approx(stock_logs[key], rel=1e-4), key
    positions = batch["position_ids"]
    padding = int(
        ((positions == 0) & (batch["input_ids"] == ours.processing_class.pad_token_id)).sum()
    )
    assert our_logs["num_tokens"] == positions.size(1) - padding
    if not pad:
        assert our_logs["num_tokens"] == stock_logs["num_tokens"]


def test_liger_is_on_by_default_only_on_cuda_and_can_be_turned_off(monkeypatch, tmp_path):
    pytest.importorskip("liger_kernel")
    from tier3.trainers.training.settings import TrainerSettings

    assert TrainerSettings().resolved("cuda").use_liger_kernel is True
    assert TrainerSettings().resolved("cpu").use_liger_kernel is False
    monkeypatch.setenv("TIER3_TRAIN_USE_LIGER_KERNEL", "false")
    assert TrainerSettings().resolved("cuda").use_liger_kernel is False


def test_flex_attention_batches_all_have_one_length(tmp_path):
    pytest.importorskip("trl")
    from tier3.trainers.training.settings import TrainerSettings
    from tier3.trainers.training.sft import sft_config

    flex = TrainerSettings(attn_implementation="flex_attention", max_length=1024)
    assert sft_config(flex, tmp_path, "cpu").pad_to_multiple_of == 4 * 1024
    assert sft_config(TrainerSettings(), tmp_path, "cpu").pad_to_multiple_of is None
    unpacked = flex.model_copy(update={"packing": False})
    assert sft_config(unpacked, tmp_path, "cpu").pad_to_multiple_of is None
    built = sft_config(flex, tmp_path, "cpu")
    assert built.logging_nan_inf_filter is False and built.prediction_loss_only is True
