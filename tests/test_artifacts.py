"""serve_app.core.artifacts: the local-folder artifact store and its key rules."""

from __future__ import annotations

import os
import threading
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


def test_round_trip(store: LocalArtifactStore) -> None:
    assert isinstance(store, ArtifactStore)
    key = "jobs/3f2a/output.png"
    assert not store.exists(key)
    with store.writer(key) as f:
        f.write(b"abc")
        f.write(b"def")
    assert store.exists(key)
    assert store.size(key) == 6
    with store.open(key) as f:
        assert f.read() == b"abcdef"
    assert store.put_bytes("uploads/u1/input", b"x" * 10) == 10
    assert store.local_path("uploads/u1/input").read_bytes() == b"x" * 10
    # overwrite is atomic too
    store.put_bytes(key, b"new")
    assert store.open(key).read() == b"new"
    assert all_files(store.root) == ["jobs/3f2a/output.png", "uploads/u1/input"]


def test_missing_objects(store: LocalArtifactStore) -> None:
    with pytest.raises(FileNotFoundError):
        store.open("jobs/none/output.png")
    with pytest.raises(FileNotFoundError):
        store.size("jobs/none/output.png")
    assert not store.exists("jobs/none/output.png")
    store.delete("jobs/none/output.png")  # missing is fine
    store.put_bytes("jobs/a/x", b"1")
    assert not store.exists("jobs/a")  # a folder is not an object
    with pytest.raises(FileNotFoundError):
        store.size("jobs/a")


def test_writer_is_atomic(store: LocalArtifactStore) -> None:
    key = "uploads/u2/input"
    with pytest.raises(RuntimeError, match="boom"), store.writer(key) as f:
        f.write(b"partial data")
        # not visible under its key while being written
        assert not store.exists(key)
        raise RuntimeError("boom")
    assert not store.exists(key)
    assert all_files(store.root) == []  # no temp file left behind
    assert not (store.root / "uploads").exists()  # nor the folders created for it

    # a failed overwrite keeps the previous object
    store.put_bytes(key, b"old")
    with pytest.raises(RuntimeError), store.writer(key) as f:
        f.write(b"new but broken")
        raise RuntimeError("boom")
    assert store.open(key).read() == b"old"
    assert all_files(store.root) == [key]


@pytest.mark.parametrize(
    "key",
    [
        "",
        "../x",
        "a/../../b",
        "a/./b",
        "..",
        ".",
        "/abs",
        "/etc/passwd",
        "a//b",
        "a/b/",
        "a\\b",
        "a/b c",
        "a/\x00b",
        "ünï/code",
        "x" * 257,
        "a/" + "y" * 255,
        "y" * 256,  # one segment longer than a file name may be
    ],
)
def test_invalid_keys(store: LocalArtifactStore, key: str) -> None:
    with pytest.raises(ValueError):
        validate_key(key)
    with pytest.raises(ValueError):
        store.writer(key)
    with pytest.raises(ValueError):
        store.put_bytes(key, b"x")
    with pytest.raises(ValueError):
        store.open(key)
    with pytest.raises(ValueError):
        store.local_path(key)
    with pytest.raises(ValueError):
        store.exists(key)
    with pytest.raises(ValueError):
        store.delete(key)
    assert not store.root.exists() or all_files(store.root) == []


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


def test_delete_prefix(store: LocalArtifactStore) -> None:
    for key in [
        "jobs/j1/output.png",
        "jobs/j1/frames/000001.png",
        "jobs/j1/frames/000002.png",
        "jobs/j10/output.png",
        "jobs/j2/output.png",
        "uploads/j1/input",
    ]:
        store.put_bytes(key, b"x")
    assert store.delete_prefix("jobs/j1/") == 3
    assert all_files(store.root) == [
        "jobs/j10/output.png",
        "jobs/j2/output.png",
        "uploads/j1/input",
    ]
    assert not (store.root / "jobs" / "j1").exists()
    # a plain string prefix, as in S3
    assert store.delete_prefix("jobs/j") == 2
    assert all_files(store.root) == ["uploads/j1/input"]
    assert store.delete_prefix("nothing/here/") == 0
    for bad in ["", "../", "a/../", "/abs/", "a//"]:
        with pytest.raises(ValueError):
            store.delete_prefix(bad)
    assert all_files(store.root) == ["uploads/j1/input"]


def test_delete_prefix_leaves_writes_in_progress(store: LocalArtifactStore) -> None:
    with store.writer("jobs/j1/output.png") as f:
        f.write(b"x")
        assert store.delete_prefix("jobs/j1/") == 0
    assert store.exists("jobs/j1/output.png")


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


def test_concurrent_writers(store: LocalArtifactStore) -> None:
    errors: list[BaseException] = []
    barrier = threading.Barrier(16)

    def work(i: int) -> None:
        try:
            barrier.wait()
            for j in range(20):
                key = f"jobs/j{i % 4}/part-{i}-{j}.bin"  # 4 threads share each folder
                with store.writer(key) as f:
                    for _ in range(4):
                        f.write(bytes([i]) * 1000)
                if j % 2:
                    store.delete(key)  # deletes prune folders others are writing into
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    files = all_files(store.root)
    assert len(files) == 16 * 10
    for i in range(16):
        for j in range(0, 20, 2):
            key = f"jobs/j{i % 4}/part-{i}-{j}.bin"
            assert store.open(key).read() == bytes([i]) * 4000


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
