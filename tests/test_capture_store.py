"""Trace objects: keys from query_id, idempotent rewrites, whole objects only, any fsspec store."""

from __future__ import annotations

from pathlib import Path

import fsspec
import pytest
from tier3.consumers.object_store import TraceStore, UnsafeKeyError


def test_local_writes_land_under_the_query_key_and_rewrites_replace(tmp_path: Path):
    store = TraceStore((tmp_path / "objects").as_uri())
    uri = store.write("ab12cd", {"query_id": "ab12cd", "created_at": 1})
    assert uri == (tmp_path / "objects" / "traces" / "ab" / "ab12cd.json").as_uri()
    store.write("ab12cd", {"query_id": "ab12cd", "created_at": 2})  # redelivered: rewritten
    assert store.read("ab12cd")["created_at"] == 2
    assert list(store.query_ids()) == ["ab12cd"]
    assert list((tmp_path / "objects" / ".tmp").iterdir()) == []  # staged, then renamed away


def test_object_stores_get_a_direct_put(tmp_path: Path):
    # fsspec's in-memory filesystem stands for s3:// and friends: no rename, no staging area.
    root = "memory://bucket/tier3"
    store = TraceStore(root)
    assert store.write("q1", {"query_id": "q1"}) == "memory://bucket/tier3/traces/q1/q1.json"
    assert store.read("q1") == {"query_id": "q1"}
    assert list(store.query_ids()) == ["q1"]
    assert not fsspec.filesystem("memory").exists("/bucket/tier3/.tmp")


@pytest.mark.parametrize("query_id", ["../etc/passwd", "a/b", "", ".hidden", "x" * 300, "q id"])
def test_query_ids_that_cannot_be_keys_are_refused(tmp_path: Path, query_id: str):
    store = TraceStore((tmp_path / "objects").as_uri())
    with pytest.raises(UnsafeKeyError):
        store.write(query_id, {})
    assert not (tmp_path / "objects" / "traces").exists()
