"""TRL's SFTTrainer with its per-step metrics kept on the GPU until a step that logs them.

Why: stock TRL 1.16 reads its per-step metrics on the host at every step: ``compute_loss``
calls ``.item()`` on the mean entropy and the token accuracy, compares ``num_valid > 0`` in
Python and ``.item()``s the batch's token count. Each read waits for the GPU to finish all the
work queued so far, so the host stops running ahead of the device, and the GPU then idles while
the host queues the next kernels; the H100 profile in bench/RESULTS.md put
``cudaStreamSynchronize`` at 38% of the host's time. Here the same three numbers are summed on
the device, as tensors, and read once per logging step (``logging_steps``), where the HF Trainer
reads the loss anyway.

What is computed is the same loss, by the same fused LM head (TRL's ``add_fused_lm_head``:
the loss over the labelled tokens, divided by ``num_items_in_batch``), and the same metrics,
except that ``entropy`` and ``mean_token_accuracy`` are averaged over the tokens of the logging
window rather than as a mean of per-step means (steps with more labelled tokens weigh more);
``num_tokens`` leaves out the padding that fixed-length batches add (``pad_to_multiple_of``:
see ``sft.sft_config``), so tokens/s counts real tokens. Any case the plain path does not cover
(a custom ``compute_loss_func``, label smoothing, DFT loss, MoE auxiliary loss, sequence or
tensor parallelism, ``return_outputs``) is left to TRL's own ``compute_loss``, unchanged.

Not removed, since it would mean forking TRL or transformers: the fused LM head selects the
labelled positions with a boolean mask (``hidden_states[mask]``: one ``nonzero`` each for the
hidden states and the labels), and transformers' packed-sequence detection reads one ``.all()``
per forward. The HF Trainer's own per-step read, ``logging_nan_inf_filter``, is turned off in
``sft.sft_config``. ``bench/bench_trainer_gpu.py`` counts the synchronizations per step
(``torch.cuda.set_sync_debug_mode``) so the difference is measured, not assumed.
"""

from __future__ import annotations

from typing import Any

import torch
from trl import SFTTrainer


class DeviceMetricsSFTTrainer(SFTTrainer):
    """SFTTrainer whose entropy, token accuracy and token count never stop the GPU mid-step."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Per mode: [labelled tokens, entropy sum, top-1 hits], and real tokens seen (train).
        self._device_sums: dict[str, torch.Tensor | None] = {"train": None, "eval": None}
        self._device_tokens: torch.Tensor | int = 0

    def _plain_path(self, return_outputs: bool) -> bool:
        """Whether this step is the one TRL computes with the fused head alone."""
        parallel = getattr(self.accelerator, "parallelism_config", None)
        return (
            not return_outputs
            and self.compute_loss_func is None
            and self.label_smoother is None
            and self.args.loss_type == "nll"
            and not self.aux_loss_enabled
            and (
                parallel is None
                or not (parallel.sp_enabled or parallel.tp_enabled or parallel.cp_enabled)
            )
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not self._plain_path(return_outputs):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        mode = "train" if self.model.training else "eval"
        inputs["use_cache"] = False
        outputs = model(**inputs, fused_lm_head=True)
        # As TRL: -log p summed over labelled tokens (zero elsewhere), over the batch's count.
        count = outputs.label_mask.sum() if num_items_in_batch is None else num_items_in_batch
        loss = -outputs.log_probs.sum() / torch.as_tensor(count).clamp(min=1)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes
        self._add_metrics(mode, outputs, inputs)
        return loss

    def _add_metrics(self, mode: str, outputs: Any, inputs: dict[str, Any]) -> None:
        step = torch.stack(
            [
                outputs.label_mask.sum().float(),
                outputs.entropy.detach().float().sum(),
                outputs.is_top1.sum().float(),
            ]
        )
        sums = self._device_sums[mode]
        self._device_sums[mode] = step if sums is None else sums + step
        if mode == "train":
            self._device_tokens = self._device_tokens + self._real_tokens(inputs)

    def _real_tokens(self, inputs: dict[str, Any]) -> torch.Tensor | int:
        """The batch's tokens without padding: a host int when the shape tells, else on device."""
        if "attention_mask" in inputs:
            return inputs["attention_mask"].sum()
        positions = inputs["position_ids"]
        if not self.args.pad_to_multiple_of:
            return positions.size(1)  # padding-free: every position is a real token
        # Padding appended to a packed batch: position 0 and the pad token (a real example
        # starts at position 0 too, but with its first token, never the pad token).
        pad = self.processing_class.pad_token_id
        padding = ((positions == 0) & (inputs["input_ids"] == pad)).sum()
        return positions.size(1) - padding

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Read the sums once (one transfer for all ranks), hand them to TRL's ``log``."""
        mode = "train" if self.model.training else "eval"
        sums = self._device_sums[mode]
        if sums is not None:
            tokens = torch.as_tensor(self._device_tokens, device=sums.device, dtype=sums.dtype)
            both = torch.cat([sums, tokens.reshape(1)])
            if self.accelerator.num_processes > 1:
                both = self.accelerator.reduce(both, reduction="sum")
            valid, entropy, correct, seen = both.tolist()
            self._device_sums[mode] = None
            self._metrics[mode]["entropy"] = [entropy / valid if valid else 0.0]
            self._metrics[mode]["mean_token_accuracy"] = [correct / valid if valid else 0.0]
            if mode == "train":
                self._device_tokens = 0
                self._total_train_tokens += int(seen)
            self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
        super().log(logs, start_time)
