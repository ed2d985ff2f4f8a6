"""The trainer's configuration: one settings object, read from ``TIER3_TRAIN_*`` variables.

Defaults are for a real run on one GPU, and measured there (bench/RESULTS.md): LoRA r=16 on
every linear layer without adapter dropout (a dropout mask on the input of every adapted layer
cost 20% of the step time on an H100), bf16 where the device supports it, packing (in TRL:
padding-free batches, one flat sequence whose examples are kept apart by a block-diagonal mask
that transformers builds from the packed ``position_ids``), ``flex_attention`` on GPU (it skips
the masked-out blocks that ``sdpa`` computes: 2.2x the tokens/s on an H100; it has no backward
pass on CPU, where ``sdpa`` is used), the fused AdamW, and 4 packed sequences of 2048 tokens
per step. Tests override the few fields that make a CPU run small (``max_steps``, batch size,
the base model path).

Fields whose right value depends on the device (``bf16``, ``optim``, ``attn_implementation``)
default to ``None`` and are resolved by ``resolved()`` once the device is known, so one
configuration serves CPU tests, one GPU and several.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class TrainerConfig(BaseSettings):
    """How tier3 fine-tunes the student (env: ``TIER3_TRAIN_<FIELD>``)."""

    model_config = SettingsConfigDict(
        env_prefix="TIER3_TRAIN_", env_file=".env", extra="ignore", populate_by_name=True
    )

    # What to train
    base_model: str = Field(
        "meta-llama/Llama-3.2-1B-Instruct",
        description="Base model: a local folder or a hub id (downloaded by transformers' cache).",
    )
    student_model: str = Field(
        "cc-widget-selector",
        validation_alias=AliasChoices("TIER3_STUDENT_MODEL", "TIER3_TRAIN_STUDENT_MODEL"),
        description="Name of the student model trained (the counter's TIER3_STUDENT_MODEL).",
    )
    min_traces: int = Field(
        100,
        ge=1,
        validation_alias=AliasChoices("TIER3_MIN_TRACES", "TIER3_TRAIN_MIN_TRACES"),
        description="Traces needed before `tier3 train` asks for a run (without --force).",
    )
    min_train_examples: int = Field(
        8, ge=1, description="Below this many training examples a run fails instead of training."
    )
    eval_share: float = Field(
        0.1, ge=0.0, lt=1.0, description="Share of query_ids held out for evaluation, by hash."
    )

    # LoRA
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="Dropout on the adapter's input; 0 skips it (1.25x faster on an H100).",
    )
    target_modules: str = Field(
        "all-linear", description="'all-linear' or a comma-separated list of module names."
    )

    # Optimisation
    learning_rate: float = Field(2e-4, gt=0)
    num_train_epochs: float = Field(3.0, gt=0)
    max_steps: int = Field(-1, description="Stop after this many steps (-1: run the epochs).")
    per_device_train_batch_size: int = Field(
        4, ge=1, description="Sequences per GPU per step (packed: 4 of 2048 tokens)."
    )
    gradient_accumulation_steps: int = Field(1, ge=1)
    warmup_ratio: float = Field(0.03, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    seed: int = 42

    # Throughput and memory
    max_seq_length: int = Field(2048, ge=16, description="Tokens per packed sequence.")
    packing: bool = Field(True, description="Pack examples into padding-free sequences.")
    bf16: bool | None = Field(None, description="bf16 mixed precision (None: on where supported).")
    gradient_checkpointing: bool = Field(
        False, description="Trade ~30% compute for activation memory; turn on for large bases."
    )
    attn_implementation: str | None = Field(
        None,
        description="Attention kernel (None: flex_attention on GPU, sdpa on CPU).",
    )
    optim: str | None = Field(None, description="Optimizer (None: fused AdamW on GPU).")
    nproc_per_node: int = Field(
        1, ge=1, description="GPUs of this host to train on; >1 runs the SFT stage under torchrun."
    )

    # Checkpoints and artefacts
    logging_steps: int = Field(10, ge=1)
    save_steps: int = Field(200, ge=1, description="Checkpoint every this many steps.")
    save_total_limit: int = Field(2, ge=1)
    merge_weights: bool = Field(False, description="Also save the base merged with the adapter.")
    work_dir: Path | None = Field(
        None, description="Local folder for checkpoints (default <TIER3_HOME>/training)."
    )
    progress: Literal["auto", "bar", "logs"] = Field(
        "auto", description="Progress display: a bar on a terminal, structured logs otherwise."
    )

    def target_module_list(self) -> str | list[str]:
        if self.target_modules == "all-linear":
            return "all-linear"
        return [name.strip() for name in self.target_modules.split(",") if name.strip()]

    def resolved(self, device: str) -> TrainerConfig:
        """This configuration with the device-dependent fields decided for ``device``."""
        on_gpu = device == "cuda"
        bf16 = self.bf16
        if bf16 is None:
            bf16 = on_gpu and _cuda_bf16_supported()
        optim = self.optim or ("adamw_torch_fused" if on_gpu else "adamw_torch")
        attention = self.attn_implementation or ("flex_attention" if on_gpu else "sdpa")
        return self.model_copy(
            update={"bf16": bf16, "optim": optim, "attn_implementation": attention}
        )


def _cuda_bf16_supported() -> bool:
    import torch

    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
