"""Models from a bucket: verified weights published once, node-local caches filled from it.

`bgremove models pull IDS --to s3://bucket/models` pulls (or finds) each model's weights, checks
them against the catalog's checksum and copies them into the bucket under their file name (and a
model's verified int8 build beside it). Serving nodes name the same bucket in `models_url`: the
app builder fills `models_dir` from it before looking weights up, and a replica that starts on a
node whose `models_dir` lacks its file fetches it there first. Every fetched file is checked
before it is moved into place: against the catalog's checksum (sha256, or rembg's md5), so for
those the bucket is a transport, not a source of trust. Files the catalog cannot pin because
`pull` converts them on the machine (the MediaPipe models, from TFLite) are checked against the
sha256 the publisher recorded beside them (`<file>.sha256`): that guards against corruption
and partial copies, and trusts whoever may write the bucket. The RWX models volume becomes
optional.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from pathlib import Path

from pipelines.catalog import AssetSpec, Catalog, ModelSpec, load_catalog
from pipelines.weights import file_digest, find_int8, int8_refusal, verify
from serve_app.core.artifacts import ArtifactStore, ArtifactStoreUnavailable, store_from_url
from serve_app.core.settings import Settings

log = logging.getLogger("ray.serve.bgremove")

Spec = ModelSpec | AssetSpec


class ModelBucketError(Exception):
    """A model cannot be published or fetched (unpinned, missing, or not the pinned bytes)."""


def _pinned(spec: Spec) -> bool:
    return spec.weights.sha256 is not None or spec.weights.md5 is not None


class ModelBucket:
    def __init__(self, store: ArtifactStore) -> None:
        self.store = store

    @classmethod
    def from_settings(cls, settings: Settings, url: str | None = None) -> ModelBucket | None:
        url = url or settings.models_url
        return cls(store_from_url(url, settings)) if url else None

    # -- publishing --------------------------------------------------------------------------

    def publish(self, spec: Spec, path: Path, search_dirs: list[Path]) -> list[str]:
        """Copy the weights at `path` (checked against the catalog where it pins them) and a
        servable int8 build found in `search_dirs` into the bucket, each with its sha256
        beside it; returns the keys of the weights written."""
        problem = verify(path, spec)
        if problem is not None:
            raise ModelBucketError(f"{spec.id}: {problem}")
        keys = [self._upload(path, spec.weights.file)]
        if isinstance(spec, ModelSpec) and (int8 := find_int8(spec, search_dirs)) is not None:
            keys.append(self._upload(int8, spec.weights.int8_file))
        return keys

    def _upload(self, path: Path, key: str) -> str:
        digest = file_digest(path)
        try:
            if self._recorded(key) == digest and self.store.size(key) == path.stat().st_size:
                return key  # the same bytes already there: nothing to send
        except FileNotFoundError:
            pass
        with open(path, "rb") as src, self.store.writer(key) as out:
            shutil.copyfileobj(src, out, 8 * 1024 * 1024)
        self.store.put_bytes(f"{key}.sha256", digest.encode())
        return key

    def _recorded(self, key: str) -> str | None:
        """The sha256 the publisher recorded for `key`, or None."""
        try:
            with self.store.open(f"{key}.sha256") as f:
                return f.read(128).decode("ascii", "replace").strip() or None
        except FileNotFoundError:
            return None

    # -- fetching ----------------------------------------------------------------------------

    def fetch(self, spec: Spec, folder: Path, int8: bool = False) -> Path:
        """`folder/<file>` holding the verified weights (or, with `int8`, the model's servable
        int8 build): fetched from the bucket unless already there and valid."""
        name = spec.weights.int8_file if int8 and isinstance(spec, ModelSpec) else spec.weights.file
        target = folder / name
        pinned = int8 or _pinned(spec)
        if target.is_file() and pinned and self._problem(spec, target, int8, None) is None:
            return target
        try:
            recorded = None if pinned else self._recorded(name)
        except ArtifactStoreUnavailable:
            if target.is_file():  # checked when it was fetched; the bucket is out right now
                log.warning("model %s: the models bucket cannot be reached; using the copy "
                            "fetched earlier, %s", spec.id, target)
                return target
            raise
        if not pinned and recorded is None:
            raise ModelBucketError(f"{spec.id}: neither the catalog nor the bucket gives a "
                                   f"checksum for {name}; not fetched")
        if target.is_file() and self._problem(spec, target, int8, recorded) is None:
            return target
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{name}.{uuid.uuid4().hex}.part"
        try:
            try:
                src = self.store.open(name)
            except FileNotFoundError:
                raise ModelBucketError(f"{spec.id}: {name} is not in the bucket (publish it "
                                       "with `bgremove models pull --to`)") from None
            with src, open(tmp, "wb") as out:
                shutil.copyfileobj(src, out, 8 * 1024 * 1024)
            problem = self._problem(spec, tmp, int8, recorded)
            if problem is not None:
                raise ModelBucketError(f"{spec.id}: the bucket's {name} is not the expected "
                                       f"file ({problem}); not used")
            os.replace(tmp, target)  # concurrent fetches of one file: the last identical copy wins
        finally:
            tmp.unlink(missing_ok=True)
        log.info("model %s: fetched %s from the bucket into %s", spec.id, name, folder)
        return target

    @staticmethod
    def _problem(spec: Spec, path: Path, int8: bool, recorded: str | None) -> str | None:
        if int8 and isinstance(spec, ModelSpec):
            return int8_refusal(spec, path)
        if recorded is not None:
            got = file_digest(path)
            return None if got == recorded else f"sha256 {got}, published as {recorded}"
        return verify(path, spec)


def fill_cache(bucket: ModelBucket, specs: list[Spec], folder: Path) -> dict[str, str]:
    """Fetch what `folder` lacks of `specs` (and their servable int8 builds); returns
    {id: why not} for those that could not be had (the builder then reports them missing)."""
    problems: dict[str, str] = {}
    for spec in specs:
        try:
            bucket.fetch(spec, folder)
        except (ModelBucketError, ArtifactStoreUnavailable) as exc:
            problems[spec.id] = str(exc)  # an outage too: the model is reported missing
            continue
        build = spec.weights.int8 if isinstance(spec, ModelSpec) else None
        if build is not None and build.gate.passed:
            try:
                bucket.fetch(spec, folder, int8=True)
            except (ModelBucketError, ArtifactStoreUnavailable) as exc:  # optional: the float weights serve
                log.info("%s", exc)
    return problems


def local_weights(path: str, settings: Settings, catalog: Catalog | None = None) -> str:
    """The file a replica loads for the weights the builder found at `path` (on the builder's
    node). Without a models bucket: `path` itself. With one: this node's own copy in its
    `models_dir`, fetched from the bucket (verified) when missing, so no node relies on a
    folder another node filled."""
    if not settings.models_url:
        return path
    target = settings.models_dir.expanduser().resolve() / Path(path).name
    if target.is_file() and str(target) == str(Path(path).resolve()):
        return str(target)  # the builder's own node: found (and verified) there already
    catalog = catalog or load_catalog(settings.catalog_path)
    specs: list[Spec] = [*catalog.models, *catalog.assets]
    for spec in specs:
        int8 = isinstance(spec, ModelSpec) and target.name == spec.weights.int8_file
        if target.name == spec.weights.file or int8:
            bucket = ModelBucket.from_settings(settings)
            assert bucket is not None
            return str(bucket.fetch(spec, target.parent, int8=int8))
    raise ModelBucketError(f"{target.name} is no catalog model's file; not fetched")
