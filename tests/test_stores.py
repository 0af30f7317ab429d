"""The artifact store contract, run against both stores: a local folder and a bucket on a real S3
server (SeaweedFS, started by the tests). Plus what only the bucket has: multipart uploads,
ranged reads, presigned links that expire, abandoned uploads swept, and outages."""

from __future__ import annotations

import io
import threading
import time
import urllib.error
import urllib.request

import pytest

from serve_app.core.artifacts import (
    ArtifactStore,
    ArtifactStoreUnavailable,
    artifact_store,
    validate_key,
)
from serve_app.core.dependencies import as_dependency_error, storage_check
from serve_app.core.errors import DependencyUnavailable
from serve_app.core.s3_artifacts import PART_SIZE, S3ArtifactStore
from serve_app.core.settings import Settings


def keys_of(store) -> list[str]:
    """Every object key in the store (listing through the store's own prefix handling)."""
    if isinstance(store, S3ArtifactStore):
        return sorted(name[len(store.prefix):] for name, _ in store._list(""))
    return sorted(p.relative_to(store.root).as_posix() for p in store.root.rglob("*")
                  if p.is_file() and "~" not in p.name)


def test_round_trip(any_store) -> None:
    store = any_store
    assert isinstance(store, ArtifactStore)
    key = "jobs/3f2a/output.png"
    assert not store.exists(key)
    with store.writer(key) as f:
        f.write(b"abc")
        f.write(memoryview(b"def"))
    assert store.exists(key) and store.size(key) == 6
    with store.open(key) as f:
        assert f.read() == b"abcdef"
    assert store.put_bytes("uploads/u1/input", b"x" * 10) == 10
    store.put_bytes(key, b"new")  # overwrite
    assert store.open(key).read() == b"new"
    assert keys_of(store) == ["jobs/3f2a/output.png", "uploads/u1/input"]


def test_missing_objects(any_store) -> None:
    store = any_store
    with pytest.raises(FileNotFoundError):
        store.open("jobs/none/output.png")
    with pytest.raises(FileNotFoundError):
        store.size("jobs/none/output.png")
    assert not store.exists("jobs/none/output.png")
    store.delete("jobs/none/output.png")  # missing is fine
    store.put_bytes("jobs/a/x", b"1")
    assert not store.exists("jobs/a")  # a "folder" is not an object
    with pytest.raises(FileNotFoundError):
        store.size("jobs/a")


def test_writer_is_atomic(any_store) -> None:
    store, key = any_store, "uploads/u2/input"
    with pytest.raises(RuntimeError, match="boom"), store.writer(key) as f:
        f.write(b"partial data")
        assert not store.exists(key)  # not visible while being written
        raise RuntimeError("boom")
    assert not store.exists(key) and keys_of(store) == []
    store.put_bytes(key, b"old")
    with pytest.raises(RuntimeError), store.writer(key) as f:
        f.write(b"new but broken")
        raise RuntimeError("boom")
    assert store.open(key).read() == b"old"  # a failed overwrite keeps the previous object


@pytest.mark.parametrize("key", [
    "", "../x", "a/../../b", "a/./b", "..", ".", "/abs", "/etc/passwd", "a//b", "a/b/", "a\\b",
    "a/b c", "a/\x00b", "ünï/code", "x" * 257, "a/" + "y" * 255,
    "y" * 256,  # one segment longer than a file name may be
])
def test_invalid_keys(any_store, key: str) -> None:
    store = any_store
    with pytest.raises(ValueError):
        validate_key(key)
    for call in (store.writer, lambda k: store.put_bytes(k, b"x"), store.open, store.exists,
                 store.delete, store.size, store.local_path):
        with pytest.raises(ValueError):
            call(key)
    assert keys_of(store) == []


def test_delete_prefix_leaves_writes_in_progress(any_store) -> None:
    with any_store.writer("jobs/j1/output.png") as f:
        f.write(b"x")
        assert any_store.delete_prefix("jobs/j1/") == 0  # not an object until it is whole
    assert any_store.exists("jobs/j1/output.png")


def test_seek_and_ranges(any_store) -> None:
    store = any_store
    data = bytes(range(256)) * 40
    store.put_bytes("jobs/r/output.webm", data)
    f = store.open("jobs/r/output.webm")
    with f:
        assert f.seek(0, io.SEEK_END) == len(data)
        f.seek(1000)
        assert f.read(24) == data[1000:1024]
        assert f.read(8) == data[1024:1032]  # continues where it was
        f.seek(-10, io.SEEK_END)
        assert f.read() == data[-10:]
        assert f.read(5) == b""
        f.seek(3)
        assert f.read(2) == data[3:5]


def test_delete_prefix_and_sweep(any_store) -> None:
    store = any_store
    for key in ["jobs/j1/output.png", "jobs/j1/frames/1.png", "jobs/j10/output.png",
                "jobs/j2/output.png", "uploads/j1/input"]:
        store.put_bytes(key, b"x")
    assert store.delete_prefix("jobs/j1/") == 2
    assert keys_of(store) == ["jobs/j10/output.png", "jobs/j2/output.png", "uploads/j1/input"]
    assert store.delete_prefix("jobs/j") == 2  # a plain string prefix, as in S3
    assert store.delete_prefix("nothing/here/") == 0
    for bad in ["", "../", "a/../", "/abs/", "a//"]:
        with pytest.raises(ValueError):
            store.delete_prefix(bad)
    assert store.sweep(3600) == 0  # nothing that old
    assert store.sweep(3600, prefix="uploads/") == 0
    time.sleep(1.1)  # LastModified has one-second resolution
    store.put_bytes("uploads/new/input", b"y")
    assert store.sweep(1.0, prefix="uploads/") == 1  # the older one only
    assert keys_of(store) == ["uploads/new/input"]
    assert store.sweep(-60) == 1
    assert keys_of(store) == []


def test_concurrent_writers(any_store) -> None:
    store, errors = any_store, []
    barrier = threading.Barrier(8)

    def work(i: int) -> None:
        try:
            barrier.wait()
            for j in range(6):
                key = f"jobs/j{i % 2}/part-{i}-{j}.bin"
                with store.writer(key) as f:
                    for _ in range(4):
                        f.write(bytes([i]) * 1000)
                if j % 2:
                    store.delete(key)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(keys_of(store)) == 8 * 3
    for i in range(8):
        assert store.open(f"jobs/j{i % 2}/part-{i}-0.bin").read() == bytes([i]) * 4000


# ---- only the bucket ---------------------------------------------------------------------------
@pytest.fixture
def s3(s3_server, tmp_path):
    import uuid

    from s3_server import BUCKET
    return S3ArtifactStore(BUCKET, f"t-{uuid.uuid4().hex[:12]}", client=s3_server.client())


def test_large_objects_stream_as_multipart_uploads(s3) -> None:
    key = "inputs/big/input"
    calls: list[str] = []
    real = s3.client._make_api_call

    def spy(operation, params):
        calls.append(operation)
        return real(operation, params)

    s3.client._make_api_call = spy
    chunk = bytes(range(251)) * 4096  # ~1 MB, a length prime to the part size
    total = 0
    with s3.writer(key) as f:
        for _ in range(20):
            f.write(chunk)
            total += len(chunk)
            if total < PART_SIZE:
                assert "CreateMultipartUpload" not in calls  # nothing sent before a part fills
    s3.client._make_api_call = real
    assert calls.count("UploadPart") == -(-total // PART_SIZE)
    assert calls[0] == "CreateMultipartUpload" and calls[-1] == "CompleteMultipartUpload"
    assert s3.size(key) == total
    with s3.open(key) as f:
        f.seek(PART_SIZE - 5)
        assert f.read(10) == (chunk * 20)[PART_SIZE - 5:PART_SIZE + 5]  # across a part border


def test_empty_and_exactly_one_part_objects(s3) -> None:
    with s3.writer("jobs/e/empty.bin"):
        pass
    assert s3.size("jobs/e/empty.bin") == 0 and s3.open("jobs/e/empty.bin").read() == b""
    data = bytes(range(256)) * (PART_SIZE // 256)  # exactly one part: no empty trailing part
    with s3.writer("jobs/e/one-part.bin") as f:
        f.write(data)
    assert s3.size("jobs/e/one-part.bin") == PART_SIZE
    with s3.open("jobs/e/one-part.bin") as f:
        f.seek(PART_SIZE - 3)
        assert f.read(10) == data[-3:]  # a read past the end is clamped
        with pytest.raises(ValueError):
            f.seek(-1)


def test_an_object_replaced_while_read_is_not_mixed(s3) -> None:
    s3.put_bytes("jobs/c/output.webm", b"A" * 1000)
    f = s3.open("jobs/c/output.webm")
    assert f.read(10) == b"A" * 10
    s3.put_bytes("jobs/c/output.webm", b"B" * 1000)
    f.seek(500)  # a new ranged GET, pinned to the first ETag: refused, never B's bytes
    with pytest.raises(FileNotFoundError, match="changed while read"):
        f.read(10)
    f.close()


def test_a_missing_bucket_is_an_outage_on_every_call(s3_server) -> None:
    store = S3ArtifactStore("no-such-bucket-here", "p", client=s3_server.client())
    for call in (lambda: store.put_bytes("a/b", b"1"), lambda: store.open("a/b"),
                 lambda: store.delete("a/b"), lambda: store.delete_prefix("a/"),
                 lambda: store.sweep(0), store.reachable):
        with pytest.raises(ArtifactStoreUnavailable) as down:
            call()
        assert down.value.reason == "no_bucket"


def test_failed_multipart_upload_is_aborted(s3) -> None:
    with pytest.raises(RuntimeError), s3.writer("inputs/x/input") as f:
        f.write(b"z" * (PART_SIZE + 10))  # one part sent
        raise RuntimeError("client went away")
    assert not s3.exists("inputs/x/input")
    uploads = s3.client.list_multipart_uploads(Bucket=s3.bucket, Prefix=s3.prefix)
    assert not uploads.get("Uploads")


def test_sweep_aborts_abandoned_uploads(s3) -> None:
    for dead in ("uploads/dead/input", "uploads/dead2/input"):  # killed writers
        name = s3.prefix + dead
        started = s3.client.create_multipart_upload(Bucket=s3.bucket, Key=name)
        s3.client.upload_part(Bucket=s3.bucket, Key=name, UploadId=started["UploadId"],
                              PartNumber=1, Body=b"half")
    time.sleep(1.1)
    assert s3.sweep(3600) == 0
    assert s3.client.list_multipart_uploads(Bucket=s3.bucket, Prefix=s3.prefix).get("Uploads")
    assert s3.sweep(1.0) == 0  # no object, but the abandoned upload goes
    assert not s3.client.list_multipart_uploads(Bucket=s3.bucket, Prefix=s3.prefix).get("Uploads")


def test_presigned_links_read_and_expire(s3) -> None:
    s3.put_bytes("jobs/p/output.png", b"png bytes")
    url = s3.presigned_url("jobs/p/output.png", 2, "image/png", "j1.png")
    assert "X-Amz-Signature=" in url and "X-Amz-Expires=2" in url
    with urllib.request.urlopen(url, timeout=10) as r:  # no credentials: the link is enough
        assert r.read() == b"png bytes"
        assert r.headers["Content-Type"] == "image/png"
        assert r.headers["Content-Disposition"] == 'attachment; filename="j1.png"'
    tampered = url.replace("jobs/p/output.png", "jobs/p/other.png")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(tampered, timeout=10)
    assert refused.value.code == 403
    time.sleep(3.5)
    with pytest.raises(urllib.error.HTTPError) as expired:
        urllib.request.urlopen(url, timeout=10)
    assert expired.value.code == 403
    unsigned = url.split("?")[0]
    with pytest.raises(urllib.error.HTTPError) as anonymous:
        urllib.request.urlopen(unsigned, timeout=10)
    assert anonymous.value.code == 403  # the bucket itself is not public


def test_wrong_credentials_and_missing_bucket_are_outages(s3_server) -> None:
    import boto3
    from botocore.config import Config

    bad = boto3.session.Session().client(
        "s3", endpoint_url=s3_server.endpoint, aws_access_key_id="nobody",
        aws_secret_access_key="wrong", region_name="us-east-1",
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}))
    store = S3ArtifactStore("bgremove-tests", "x", client=bad)
    with pytest.raises(ArtifactStoreUnavailable) as denied:
        store.put_bytes("a/b", b"1")
    assert denied.value.reason == "denied"
    with pytest.raises(ArtifactStoreUnavailable):
        storage_check(store, 0)
    missing = S3ArtifactStore("no-such-bucket-here", client=s3_server.client())
    with pytest.raises(ArtifactStoreUnavailable, match="does not exist"):
        missing.reachable()


def test_unreachable_bucket_is_a_503_dependency_error(s3_server, monkeypatch) -> None:
    import socket
    for name, value in s3_server.env.items():  # valid credentials: only the address is wrong
        monkeypatch.setenv(name, value)
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = S3ArtifactStore("bucket", endpoint_url=f"http://127.0.0.1:{port}",
                            addressing_style="path", connect_timeout_s=0.5)
    started = time.monotonic()
    with pytest.raises(ArtifactStoreUnavailable) as down:
        store.put_bytes("jobs/a/output.png", b"x")
    assert time.monotonic() - started < 15  # fails fast: a bounded number of retries
    mapped = as_dependency_error(down.value, "Failed to submit image: ")
    assert isinstance(mapped, DependencyUnavailable)
    assert mapped.details == {"dependency": "storage", "reason": "unavailable",
                              "retry_after_s": 5}
    assert mapped.message.startswith("Failed to submit image: the artifact storage cannot be used")


def test_outage_and_recovery_against_the_real_server(s3_server, s3, monkeypatch) -> None:
    for name, value in s3_server.env.items():  # credentials as a service gets them
        monkeypatch.setenv(name, value)
    s3.put_bytes("jobs/o/output.png", b"kept")
    s3_server.stop()
    try:
        fast = S3ArtifactStore(s3.bucket, s3.prefix, endpoint_url=s3_server.endpoint,
                               addressing_style="path", connect_timeout_s=0.5)
        with pytest.raises(ArtifactStoreUnavailable):
            fast.open("jobs/o/output.png")
        with pytest.raises(ArtifactStoreUnavailable):
            storage_check(fast, 0)
    finally:
        s3_server.start()
    assert s3.open("jobs/o/output.png").read() == b"kept"  # nothing lost


def test_artifact_store_from_settings(tmp_path) -> None:
    store = artifact_store(Settings(artifacts_url="s3://my-bucket/bgremove/prod",
                                    s3_endpoint_url="http://minio:9000",
                                    s3_addressing_style="path"))
    assert isinstance(store, S3ArtifactStore)
    assert (store.bucket, store.prefix) == ("my-bucket", "bgremove/prod/")
    assert artifact_store(Settings(artifacts_url="s3://b2")).prefix == ""
    for url in ["s3://", "s3:///prefix-only", "s3://b/p?x=1", "gs://bucket"]:
        with pytest.raises(ValueError):
            artifact_store(Settings(artifacts_url=url))
    with pytest.raises(ValueError):
        S3ArtifactStore("b", "../up")


def test_result_links_live_in_the_store(any_store) -> None:
    from serve_app.core.results import ResultLinks

    links = ResultLinks(any_store, ttl_s=2)
    job_id = "0f0e0d0c-0b0a-4908-8706-050403020100"
    path = links.save(job_id, "tiny.png", b"png!")
    assert path == f"{job_id}/tiny.png" and any_store.exists(f"results/{job_id}/tiny.png")
    found = links.find(job_id, "tiny.png")
    assert found is not None and 0 < found[1] <= 2
    with found[0] as f:
        assert f.read() == b"png!"
    assert links.find(job_id, "other.png") is None
    assert links.find("not-a-uuid", "tiny.png") is None
    assert links.find(job_id, "../../jobs/x.png") is None
    time.sleep(2.2)
    assert links.find(job_id, "tiny.png") is None  # expired: refused before the sweep
    assert links.sweep() == 1 and keys_of(any_store) == []
