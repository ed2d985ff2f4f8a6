"""The training step as its own program, for ``torchrun`` on several GPUs.

``python -m torch.distributed.run --nproc_per_node N -m tier3.trainers.training.sft_job job.json``
runs ``sft.train`` in N processes (accelerate, inside the HF Trainer, sets up DDP from torchrun's
environment). The job file carries the built dataset and the configuration; rank 0 writes
``sft_outcome.json`` (or the failure) beside it for the trainer process, which alone talks to
Kafka.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from tier3.trainers.artifacts import RunArtifacts
from tier3.trainers.training.dataset import BuiltDataset
from tier3.trainers.training.failures import TrainingError
from tier3.trainers.training.settings import TrainerSettings


def write_job(
    run_dir: Path,
    built: BuiltDataset,
    config: TrainerSettings,
    artifacts_uri: str,
    resume: Path | None,
) -> Path:
    """Write what the training processes need into ``run_dir/sft_job.json``."""
    job = run_dir / "sft_job.json"
    (run_dir / "sft_outcome.json").unlink(missing_ok=True)
    job.write_text(
        json.dumps(
            {
                "train": built.train,
                "eval": built.eval,
                "config": config.model_dump(mode="json"),
                "artifacts_uri": artifacts_uri,
                "resume": str(resume) if resume else None,
            }
        )
    )
    return job


def main(job_file: str) -> int:
    from tier3.trainers.training.sft import train

    job_path = Path(job_file)
    job = json.loads(job_path.read_text())
    config = TrainerSettings.model_validate(job["config"])
    model, request_id = job["artifacts_uri"].rstrip("/").rsplit("/", 2)[-2:]
    root = job["artifacts_uri"].rsplit("/models/", 1)[0]
    artifacts = RunArtifacts(root, model, request_id)
    built = BuiltDataset(train=job["train"], eval=job["eval"])
    is_rank_zero = os.environ.get("RANK", "0") == "0"
    outcome_file = job_path.parent / "sft_outcome.json"
    resume = Path(job["resume"]) if job["resume"] else None
    try:
        out = train(built, config, job_path.parent, artifacts, resume)
    except TrainingError as exc:
        if is_rank_zero:
            outcome_file.write_text(
                json.dumps({"stage": exc.stage, "reason": exc.reason, "error_type": exc.error_type})
            )
        return 1
    if is_rank_zero:
        outcome_file.write_text(
            json.dumps(
                {
                    "adapter_dir": str(out.adapter_dir),
                    "merged_dir": str(out.merged_dir) if out.merged_dir else None,
                    "metrics": out.metrics,
                }
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
