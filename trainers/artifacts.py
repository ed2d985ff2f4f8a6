"""Where a run's artefacts live in object storage, and how a finished run is told apart.

Every run of a request writes under ``<object root>/models/<model>/<request_id>/``:
``checkpoints/checkpoint-N/`` while it trains, then ``manifest.json``, ``adapter/`` and, when
asked, ``merged/``. The ``_COMPLETE`` marker is written last and holds the TrainingCompleted
record: a run is done exactly when its marker exists, so a crash at any earlier point leaves
files that nobody mistakes for a result, and the next attempt simply overwrites them.

Object storage goes through fsspec, so a local folder (``file://``, the default) and S3-like
stores (``s3://`` with s3fs) behave the same.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import fsspec

COMPLETE = "_COMPLETE"
_CHECKPOINT = re.compile(r"checkpoint-(\d+)$")


class RunArtifacts:
    """The artefacts of one request's run, under its prefix in object storage."""

    def __init__(self, object_root: str, model: str, request_id: str) -> None:
        self.uri = f"{object_root.rstrip('/')}/models/{model}/{request_id}"
        self.fs, self.path = fsspec.core.url_to_fs(self.uri)

    def uri_of(self, name: str) -> str:
        return f"{self.uri}/{name}"

    def completed(self) -> dict[str, Any] | None:
        """The TrainingCompleted record of a finished run, or None if the run is not done."""
        marker = f"{self.path}/{COMPLETE}"
        if not self.fs.exists(marker):
            return None
        return json.loads(self.fs.cat_file(marker))

    def upload_dir(self, local: Path, name: str) -> str:
        """Copy ``local`` to ``<prefix>/<name>/`` (replacing what an earlier attempt left)."""
        remote = f"{self.path}/{name}"
        if self.fs.exists(remote):
            self.fs.rm(remote, recursive=True)
        self.fs.makedirs(remote, exist_ok=True)
        files = sorted(p for p in local.rglob("*") if p.is_file())
        # trainer_state.json marks a checkpoint as whole (see latest_checkpoint): upload it last.
        files.sort(key=lambda p: p.name == "trainer_state.json")
        for file in files:
            target = f"{remote}/{file.relative_to(local).as_posix()}"
            self.fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
            self.fs.put_file(str(file), target)
        return self.uri_of(name)

    def write_json(self, name: str, payload: dict[str, Any]) -> str:
        self.fs.makedirs(self.path, exist_ok=True)
        self.fs.pipe_file(f"{self.path}/{name}", json.dumps(payload, indent=2).encode())
        return self.uri_of(name)

    def mark_complete(self, completed: dict[str, Any]) -> None:
        """Present the run as done; call only after every other artefact is written."""
        self.write_json(COMPLETE, completed)

    def latest_checkpoint(self) -> tuple[int, str] | None:
        """(step, remote path) of the newest uploaded checkpoint, if any."""
        root = f"{self.path}/checkpoints"
        if not self.fs.exists(root):
            return None
        steps = []
        for entry in self.fs.ls(root, detail=False):
            match = _CHECKPOINT.search(entry.rstrip("/"))
            if match and self.fs.exists(f"{entry.rstrip('/')}/trainer_state.json"):
                steps.append((int(match.group(1)), entry.rstrip("/")))
        return max(steps) if steps else None

    def prune_checkpoints(self, keep: int) -> None:
        """Delete all but the ``keep`` newest uploaded checkpoints."""
        root = f"{self.path}/checkpoints"
        if not self.fs.exists(root):
            return
        found = []
        for entry in self.fs.ls(root, detail=False):
            match = _CHECKPOINT.search(entry.rstrip("/"))
            if match:
                found.append((int(match.group(1)), entry.rstrip("/")))
        for _, entry in sorted(found)[:-keep]:
            self.fs.rm(entry, recursive=True)

    def download_checkpoint(self, remote: str, local_root: Path) -> Path:
        """Fetch an uploaded checkpoint into ``local_root`` (to resume on another machine)."""
        local = local_root / remote.rsplit("/", 1)[1]
        local.mkdir(parents=True, exist_ok=True)
        self.fs.get(remote + "/", str(local) + "/", recursive=True)
        return local


def latest_local_checkpoint(output_dir: Path) -> Path | None:
    """The newest complete checkpoint folder under a run's local output folder."""
    found = []
    for entry in output_dir.glob("checkpoint-*"):
        match = _CHECKPOINT.search(entry.name)
        # trainer_state.json is saved last in a checkpoint: without it the save was cut short.
        if match and (entry / "trainer_state.json").is_file():
            found.append((int(match.group(1)), entry))
    return max(found)[1] if found else None
