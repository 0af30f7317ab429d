"""serve_app.core.artifacts: what only the local-folder store does (files under its root, no
left-over temp files or folders, mtime sweeps) and the key rules. The store contract both
stores share (round trip, missing objects, atomic writes, invalid keys, prefixes, concurrent
writers) is tests/test_stores.py."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from serve_app.core.artifacts import ArtifactStore, LocalArtifactStore, artifact_store, validate_key
from serve_app.core.settings import Settings


@pytest.fixture
def store(tmp_path: Path) -> LocalArtifactStore:
    return LocalArtifactStore(tmp_path / "artifacts")


def all_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_objects_are_files_under_the_root(store: LocalArtifactStore) -> None:
    assert isinstance(store, ArtifactStore)
    store.put_bytes("jobs/3f2a/output.png", b"abc")
    assert store.put_bytes("uploads/u1/input", b"x" * 10) == 10
    assert store.local_path("uploads/u1/input").read_bytes() == b"x" * 10
    store.put_bytes("jobs/3f2a/output.png", b"new")  # an overwrite leaves no temp file
    assert all_files(store.root) == ["jobs/3f2a/output.png", "uploads/u1/input"]


def test_a_failed_write_leaves_no_temp_file_or_folder(store: LocalArtifactStore) -> None:
    key = "uploads/u2/input"
    with pytest.raises(RuntimeError, match="boom"), store.writer(key) as f:
        f.write(b"partial data")
        raise RuntimeError("boom")
    assert all_files(store.root) == []  # no temp file left behind
    assert not (store.root / "uploads").exists()  # nor the folders created for it
    store.put_bytes(key, b"old")
    with pytest.raises(RuntimeError), store.writer(key) as f:  # a failed overwrite
        f.write(b"new but broken")
        raise RuntimeError("boom")
    assert all_files(store.root) == [key]


def test_valid_keys(store: LocalArtifactStore) -> None:
    for key in [
        "a",
        "a.b",
        "..a",
        "a..",
        ".hidden/x",
        "A-Z_0-9.v2/out.mp4",
        "x" * 200 + "/" + "y" * 55,
    ]:
        assert validate_key(key) == key
    assert store.put_bytes("..a/b..", b"ok") == 2
    assert store.local_path("..a/b..") == store.root / "..a" / "b.."


def test_local_path_inside_root(store: LocalArtifactStore) -> None:
    key = "jobs/j1/output.png"
    path = store.local_path(key)
    assert path is not None
    assert path.is_relative_to(store.root)
    assert path == store.root / "jobs" / "j1" / "output.png"
    store.put_bytes(key, b"png")
    assert path.read_bytes() == b"png"
    assert path.resolve().is_relative_to(store.root.resolve())


def test_delete_cleans_empty_folders(store: LocalArtifactStore) -> None:
    store.put_bytes("jobs/j1/output.png", b"1")
    store.put_bytes("jobs/j2/output.png", b"2")
    store.delete("jobs/j1/output.png")
    assert not (store.root / "jobs" / "j1").exists()
    assert (store.root / "jobs" / "j2").is_dir()
    store.delete("jobs/j2/output.png")
    assert not (store.root / "jobs").exists()
    assert store.root.is_dir()  # the root itself stays


def test_delete_prefix_prunes_emptied_folders(store: LocalArtifactStore) -> None:
    for key in ["jobs/j1/output.png", "jobs/j1/frames/000001.png", "jobs/j10/output.png"]:
        store.put_bytes(key, b"x")
    assert store.delete_prefix("jobs/j1/") == 2
    assert not (store.root / "jobs" / "j1").exists()
    assert all_files(store.root) == ["jobs/j10/output.png"]


def test_sweep(store: LocalArtifactStore) -> None:
    now = time.time()
    old, new = now - 7200, now - 60
    for key, mtime in [
        ("jobs/old/output.png", old),
        ("jobs/old/frames/1.png", old),
        ("jobs/new/output.png", new),
        ("uploads/old/input", old),
        ("uploads/new/input", new),
    ]:
        store.put_bytes(key, b"x")
        os.utime(store.local_path(key), (mtime, mtime))
    # abandoned temp files (a writer killed mid-write) are swept as well, but not fresh ones
    stale_tmp = store.root / "uploads" / "dead" / "~tmp-0123456789abcdef"
    stale_tmp.parent.mkdir(parents=True)
    stale_tmp.write_bytes(b"half")
    os.utime(stale_tmp, (old, old))
    fresh_tmp = store.root / "uploads" / "new" / "~tmp-fedcba9876543210"
    fresh_tmp.write_bytes(b"in progress")

    assert store.sweep(3600, prefix="uploads/") == 1
    assert not store.exists("uploads/old/input")
    assert not stale_tmp.exists() and not stale_tmp.parent.exists()
    assert fresh_tmp.exists()
    assert store.exists("jobs/old/output.png")  # outside the prefix

    assert store.sweep(3600) == 2
    assert all_files(store.root) == [
        "jobs/new/output.png",
        "uploads/new/input",
        "uploads/new/~tmp-fedcba9876543210",
    ]
    assert not (store.root / "jobs" / "old").exists()
    assert store.sweep(0) == 2  # everything older than now, temp files included
    assert all_files(store.root) == []
    assert store.sweep(3600, prefix="nothing/") == 0


def test_sweep_on_missing_root(tmp_path: Path) -> None:
    assert LocalArtifactStore(tmp_path / "never-created").sweep(0) == 0


def test_artifact_store_from_settings(tmp_path: Path) -> None:
    default = artifact_store(Settings(data_dir=tmp_path / "data"))
    assert isinstance(default, LocalArtifactStore)
    assert default.root == (tmp_path / "data" / "artifacts").resolve()

    folder = tmp_path / "elsewhere with space"
    chosen = artifact_store(Settings(artifacts_url=folder.as_uri()))
    assert isinstance(chosen, LocalArtifactStore) and chosen.root == folder.resolve()
    assert artifact_store(Settings(artifacts_url=f"file://localhost{folder}")).root == chosen.root

    for url in ["gs://bucket", "https://x.example/a", "/plain/path"]:
        with pytest.raises(ValueError, match="file://"):
            artifact_store(Settings(artifacts_url=url))
    with pytest.raises(ValueError):
        artifact_store(Settings(artifacts_url="file://host/share"))
