"""Supervised fine-tuning of the student: TRL's SFTTrainer with a PEFT LoRA adapter.

The choices, and why:

- The loss is on the assistant turn only (``assistant_only_loss``): the student must learn to
  produce the teacher's thinking and answer, not to predict the prompt it is given. This needs a
  chat template with ``{% generation %}`` markers; when the base's own template has none, TRL
  swaps in its training variant of the template.
- Packing (TRL's best-fit-decreasing, which is padding-free: one flat sequence per batch with
  ``position_ids`` restarting per example) keeps every token of a batch useful. Transformers
  turns packed ``position_ids`` into a block-diagonal mask, so examples never attend to each
  other (a test checks it). ``sdpa`` computes every block of that mask; ``flex_attention``
  skips the masked-out ones, but compiles its block mask and kernels for each new shape, so
  with flex every packed batch is padded to one length (``per_device_train_batch_size`` x
  ``max_length``) and compiles once: never the per-length recompiles that stalled a GPU run
  (docs/gpu.md). The padding is a token or two per cent of a BFD-packed batch.
- Liger's RMSNorm, RoPE and SwiGLU kernels on CUDA when liger-kernel is installed
  (``use_liger_kernel``, resolved in ``settings``); TRL keeps its own fused LM head.
- The per-step metrics stay on the GPU (``device_metrics``): no host read mid-step, and the
  HF Trainer's NaN filter (a read of the loss after every step) is off: a NaN loss shows as NaN
  in the logs instead of being replaced by the running mean. Evaluation asks for the loss only,
  not the logits TRL would recompute for ``compute_metrics`` (tier3 has none).
- bf16 and the fused AdamW on GPU; fp32 on CPU (tests). Gradient checkpointing only when asked:
  for a 1B base at 2048 tokens the activations fit an H100, and recomputing them costs ~30%.
- Checkpoints every ``save_steps`` go to the run's local folder and, through a callback, to
  object storage, so a crash resumes from the last one, on this machine or another.
- Progress: a rich bar on a terminal, one structured log line per logging step otherwise.

``sft_config`` is the single place where tier3's TrainerSettings becomes TRL's SFTConfig (how,
without copying fields: ``trainers.training.settings``); the GPU benchmark imports it, so what is
measured is what runs.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from tier3.trainers.artifacts import RunArtifacts
from tier3.trainers.training.dataset import BuiltDataset
from tier3.trainers.training.failures import TrainingError
from tier3.trainers.training.settings import TrainerSettings
from tier3.trainers.training.student_base import resolve as resolve_base

log = structlog.get_logger(__name__)


@dataclass
class SFTOutcome:
    """What a finished training run left behind, locally."""

    adapter_dir: Path
    merged_dir: Path | None
    metrics: dict[str, float] = field(default_factory=dict)


def device_type() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def sft_config(settings: TrainerSettings, output_dir: Path, device: str | None = None) -> Any:
    """TRL's SFTConfig for tier3's settings on ``device`` ("cuda" or "cpu").

    Three layers, later ones winning: what tier3 fixes (the loss on the assistant turn, no
    evaluation during training, our own progress display, ...), the ``SFTArguments`` group of
    the settings as it is, and the settings' ``sft`` extras.
    """
    from trl import SFTConfig

    device = device or device_type()
    cfg = settings.resolved(device)
    on_cpu = device == "cpu"
    fixed = {
        "output_dir": str(output_dir),
        "per_device_eval_batch_size": cfg.per_device_train_batch_size,
        "lr_scheduler_type": "cosine",
        "fp16": False,
        "use_cpu": on_cpu,
        **_checkpointing_args(SFTConfig, cfg.gradient_checkpointing),
        "assistant_only_loss": True,
        "dataset_num_proc": None,
        "save_strategy": "steps",
        "eval_strategy": "no",  # evaluated once at the end, on the held-out split
        "report_to": "none",
        "disable_tqdm": True,  # our own progress callback, a bar or log lines
        "dataloader_pin_memory": not on_cpu,
        "ddp_find_unused_parameters": False,
        "logging_nan_inf_filter": False,  # a host read of the loss after every step
        "prediction_loss_only": True,  # eval_loss only: no logits recomputed for metrics
        **_one_length_for_flex(cfg),
    }
    return SFTConfig(**fixed | cfg.sft_arguments() | _checked_extras(SFTConfig, cfg.sft))


def _one_length_for_flex(cfg: TrainerSettings) -> dict[str, Any]:
    """With flex_attention and padding-free packing, pad every batch to one length, so that
    flex's block mask and kernels are compiled once rather than for each packed length."""
    if cfg.attn_implementation != "flex_attention" or not cfg.packing:
        return {}
    return {"pad_to_multiple_of": cfg.per_device_train_batch_size * cfg.max_length}


def _checked_extras(config_class: type, extras: dict[str, Any]) -> dict[str, Any]:
    """``extras`` if every key is a field of ``config_class`` that no tier3 setting owns."""
    fields = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(extras) - fields)
    if unknown:
        raise ValueError(f"TIER3_TRAIN_SFT: {unknown} are not fields of TRL's SFTConfig")
    owned = sorted(set(extras) & set(TrainerSettings.model_fields))
    if owned:
        names = ", ".join(f"TIER3_TRAIN_{name.upper()}" for name in owned)
        raise ValueError(f"TIER3_TRAIN_SFT: set {names} instead of passing {owned} in it")
    return extras


def _checkpointing_args(config_class: type, enabled: bool) -> dict[str, Any]:
    """Activation checkpointing under the name this transformers knows (renamed in v5.x)."""
    fields = getattr(config_class, "__dataclass_fields__", {})
    name = (
        "activation_checkpointing"
        if "activation_checkpointing" in fields
        else "gradient_checkpointing"
    )
    return {name: enabled, f"{name}_kwargs": {"use_reentrant": False} if enabled else None}


def lora_config(config: TrainerSettings) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=config.target_module_list(),
        task_type="CAUSAL_LM",
    )


def load_base(config: TrainerSettings, device: str) -> tuple[Any, Any]:
    """The base model and its tokenizer; a clear TrainingError when they cannot be loaded.

    ``config.base_model`` (TIER3_STUDENT_BASE) is resolved by ``student_base``: a GGUF is
    dequantized, a folder or cached hub id loaded as it is.
    """
    import torch
    from tier3.trainers.training.student_base import StudentBaseError

    cfg = config.resolved(device)
    try:
        base = resolve_base(config.base_model)
        tokenizer = base.load_tokenizer()
        model = base.load_model(
            dtype=torch.bfloat16 if cfg.bf16 else torch.float32,
            attn_implementation=cfg.attn_implementation,
        )
    except StudentBaseError as exc:
        raise TrainingError("model", str(exc), type(exc).__name__) from exc
    except (OSError, ValueError) as exc:
        raise TrainingError(
            "model",
            f"cannot load base model {config.base_model!r}: {exc}. Set TIER3_STUDENT_BASE to a "
            "GGUF file, a local folder holding a causal LM and its tokenizer, or a hub id "
            "already in the Hugging Face cache (downloads may be off).",
            type(exc).__name__,
        ) from exc
    if not tokenizer.chat_template:
        raise TrainingError(
            "model", f"the tokenizer of {config.base_model!r} has no chat template to train with"
        )
    return model, tokenizer


def train(
    built: BuiltDataset,
    config: TrainerSettings,
    output_dir: Path,
    artifacts: RunArtifacts | None = None,
    resume_from: Path | None = None,
    merge: bool | None = None,
    callbacks: list[Any] | None = None,
) -> SFTOutcome:
    """Fine-tune the base on ``built``; return the adapter (and merged weights) saved locally.

    ``merge`` overrides ``config.merge_weights`` for one call; ``callbacks`` are added to the
    HF Trainer's (e.g. a benchmark's clock).
    """
    import torch
    from datasets import Dataset
    from tier3.trainers.training.device_metrics import DeviceMetricsSFTTrainer
    from transformers.trainer_callback import PrinterCallback

    device = device_type()
    model, tokenizer = load_base(config, device)
    hooks: list[Any] = [progress_callback(config.progress), LossHistory(), *(callbacks or [])]
    if artifacts is not None:
        hooks.append(CheckpointUploader(artifacts))
    train_set = Dataset.from_list([{"messages": e["messages"]} for e in built.train])
    eval_set = (
        Dataset.from_list([{"messages": e["messages"]} for e in built.eval]) if built.eval else None
    )
    try:
        trainer = DeviceMetricsSFTTrainer(
            model=model,
            args=sft_config(config, output_dir, device),
            train_dataset=train_set,
            eval_dataset=eval_set,
            processing_class=tokenizer,
            peft_config=lora_config(config),
            callbacks=hooks,
        )
        # disable_tqdm makes the Trainer print raw log dicts instead; our callback reports.
        trainer.remove_callback(PrinterCallback)
        started = time.perf_counter()
        result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        runtime = time.perf_counter() - started
        metrics = _train_metrics(result, trainer, runtime, resume_from)
        if built.eval:
            metrics["eval_loss"] = float(trainer.evaluate()["eval_loss"])
    except torch.cuda.OutOfMemoryError as exc:
        raise TrainingError(
            "train",
            "out of GPU memory: lower TIER3_TRAIN_PER_DEVICE_TRAIN_BATCH_SIZE or "
            "TIER3_TRAIN_MAX_LENGTH, or set TIER3_TRAIN_GRADIENT_CHECKPOINTING=true",
            type(exc).__name__,
        ) from exc
    adapter_dir = output_dir / "adapter"
    trainer.save_model(str(adapter_dir))
    merged_dir = None
    if (config.merge_weights if merge is None else merge) and trainer.is_world_process_zero():
        merged_dir = output_dir / "merged"
        merged = trainer.model.merge_and_unload()
        merged.save_pretrained(str(merged_dir))
        tokenizer.save_pretrained(str(merged_dir))
        resolve_base(config.base_model).write_marker(merged_dir)  # the export keeps its tokenizer
    return SFTOutcome(adapter_dir, merged_dir, metrics)


def _train_metrics(result: Any, trainer: Any, runtime: float, resume_from: Path | None) -> dict:
    history = next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, LossHistory))
    tokens = history.tokens_seen
    metrics = {
        "train_loss": float(result.training_loss),
        "global_step": float(trainer.state.global_step),
        "runtime_s": runtime,
        "tokens": float(tokens),
        "tokens_per_second": tokens / runtime if runtime > 0 else 0.0,
        "resumed_from_step": float(_step_of(resume_from)),
        "world_size": float(trainer.args.world_size),
    }
    if history.losses:
        metrics["first_logged_loss"] = history.losses[0]
        metrics["last_logged_loss"] = history.losses[-1]
    return {k: v for k, v in metrics.items() if math.isfinite(v)}


def _step_of(checkpoint: Path | None) -> int:
    if checkpoint is None:
        return 0
    return int(checkpoint.name.rsplit("-", 1)[-1])


def _callback_base() -> type:
    from transformers import TrainerCallback

    return TrainerCallback


class LossHistory(_callback_base()):
    """Keeps the logged training losses and TRL's token count, for the run's metrics."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.tokens_seen = 0

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "loss" in logs:
            self.losses.append(float(logs["loss"]))
        if "num_tokens" in logs:
            self.tokens_seen = int(logs["num_tokens"])


class LogProgress(_callback_base()):
    """One structured log line per logging step: for services and log shippers."""

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            log.info("training started", max_steps=state.max_steps, output_dir=args.output_dir)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            fields = {k: v for k, v in logs.items() if isinstance(v, int | float)}
            log.info("training progress", step=state.global_step, of=state.max_steps, **fields)


class BarProgress(_callback_base()):
    """A rich progress bar with the latest loss: for a person at a terminal."""

    def __init__(self) -> None:
        self._progress: Any = None
        self._task: Any = None

    def on_train_begin(self, args, state, control, **kwargs):
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        if not state.is_world_process_zero:
            return
        self._progress = Progress(
            TextColumn("training"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} steps"),
            TextColumn("loss {task.fields[loss]}"),
            TimeRemainingColumn(),
            console=Console(stderr=True),  # stdout is for results (tier3 train prints JSON)
        )
        self._task = self._progress.add_task(
            "train", total=state.max_steps, completed=state.global_step, loss="-"
        )
        self._progress.start()

    def on_step_end(self, args, state, control, **kwargs):
        if self._progress is not None:
            self._progress.update(self._task, completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self._progress is not None and logs and "loss" in logs:
            self._progress.update(self._task, loss=f"{logs['loss']:.4f}")

    def on_train_end(self, args, state, control, **kwargs):
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


class CheckpointUploader(_callback_base()):
    """Copies each checkpoint to object storage as soon as it is saved locally."""

    def __init__(self, artifacts: RunArtifacts) -> None:
        self.artifacts = artifacts

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        name = f"checkpoint-{state.global_step}"
        local = Path(args.output_dir) / name
        if local.is_dir():
            uri = self.artifacts.upload_dir(local, f"checkpoints/{name}")
            self.artifacts.prune_checkpoints(keep=args.save_total_limit or 1)
            log.info("checkpoint saved", step=state.global_step, uri=uri)


def progress_callback(mode: str) -> Any:
    use_bar = mode == "bar" or (mode == "auto" and sys.stderr.isatty() and "RANK" not in os.environ)
    return BarProgress() if use_bar else LogProgress()
