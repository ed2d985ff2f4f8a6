"""Trace objects in object storage, through fsspec: a local folder by default, ``s3://`` (s3fs)
or any other fsspec filesystem by URL.

The key derives from the query id alone (``traces/<query_id[:2]>/<query_id>.json``; the two-
character fan-out keeps directories and S3 prefixes small), so writing a trace again, after a
crash or a rebalance, overwrites the same object: at-least-once delivery, exactly one object.

A reader never sees half an object. Object stores make a PUT visible whole, so there the trace is
written directly. On a local or mounted filesystem it is written to ``.tmp/`` under the root and
then renamed into place, which is atomic within one filesystem; a process killed mid-write
leaves at most a stray file in ``.tmp/``, never a truncated trace.

Calls are blocking (fsspec's sync API); the capture loop runs them in a thread pool.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from typing import Any

import fsspec

# A query id becomes part of a path: only characters that are safe in every store.
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")


class UnsafeKeyError(ValueError):
    """A query id that cannot be an object key (a path separator, '..', odd characters)."""


class TraceStore:
    """Write and read trace documents under a root URL (``file:///...``, ``s3://bucket/p``)."""

    def __init__(self, root: str, **storage_options: Any) -> None:
        self.root = root.rstrip("/")
        self.fs, self._root_path = fsspec.core.url_to_fs(self.root, **storage_options)
        protocols = self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        self._rename_into_place = "file" in protocols or "local" in protocols

    @staticmethod
    def key(query_id: str) -> str:
        if not _SAFE_ID.match(query_id) or ".." in query_id:
            raise UnsafeKeyError(f"query_id {query_id!r} cannot be an object key")
        return f"traces/{query_id[:2]}/{query_id}.json"

    def uri(self, query_id: str) -> str:
        return f"{self.root}/{self.key(query_id)}"

    def _path(self, key: str) -> str:
        return f"{self._root_path.rstrip('/')}/{key}"

    def write(self, query_id: str, document: dict[str, Any]) -> str:
        """Write (or overwrite) the trace of ``query_id``; return its URI once it is stored."""
        data = json.dumps(document, sort_keys=True, ensure_ascii=False).encode()
        final = self._path(self.key(query_id))
        if self._rename_into_place:
            staging = self._path(f".tmp/{uuid.uuid4().hex}.json")
            self.fs.makedirs(self._path(".tmp"), exist_ok=True)
            self.fs.makedirs(final.rsplit("/", 1)[0], exist_ok=True)
            self.fs.pipe_file(staging, data)
            self.fs.mv(staging, final)
        else:
            self.fs.pipe_file(final, data)
        return self.uri(query_id)

    def read(self, query_id: str) -> dict[str, Any]:
        return json.loads(self.fs.cat_file(self._path(self.key(query_id))))

    def query_ids(self) -> Iterator[str]:
        """The query id of every stored trace."""
        pattern = self._path("traces/*/*.json")
        for path in sorted(self.fs.glob(pattern)):
            yield path.rsplit("/", 1)[-1].removesuffix(".json")
