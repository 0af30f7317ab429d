"""Artifact storage: where job inputs and outputs live, behind a small key/blob interface.

An artifact is one immutable blob under a slash-separated key: uploaded inputs
(`uploads/<uuid>/input`, up to 500 MB of video) and job outputs (`jobs/<uuid>/output.png`, frames,
encoded videos). Two stores implement the interface: `LocalArtifactStore` keeps them as files
under one folder (`<data_dir>/artifacts`, or the folder a `file:///abs/path` `artifacts_url`
names; with several nodes that folder must be shared storage), and `S3ArtifactStore`
(`s3_artifacts.py`, `artifacts_url: s3://bucket/prefix`) in an S3-compatible bucket, so nodes
share nothing but the bucket. Callers never need a filesystem path: work that needs a file
(video decoding) copies the object to a worker-local temporary file.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import time
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol, runtime_checkable
from urllib.parse import unquote, urlparse

if TYPE_CHECKING:
    from serve_app.core.settings import Settings

MAX_KEY_LENGTH = 256
_NAME_MAX = 255  # a path segment is a file or folder name on the local filesystem
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")
_PREFIX = re.compile(r"(?:[A-Za-z0-9._-]+/)*[A-Za-z0-9._-]*")
# Temp files carry "~", a character no key may contain, so they can never be mistaken for (or
# collide with) an object.
_TMP_MARK = "~tmp-"
_OPEN_RETRIES = 50


def validate_key(key: str) -> str:
    """The key itself, or ValueError: segments of [A-Za-z0-9._-]+ joined by single slashes, no
    `.` or `..` segment, no leading/trailing slash, at most 256 characters."""
    if not isinstance(key, str) or not key:
        raise ValueError("artifact key must be a non-empty string")
    if len(key) > MAX_KEY_LENGTH:
        raise ValueError(f"artifact key longer than {MAX_KEY_LENGTH} characters")
    for segment in key.split("/"):
        if not _SEGMENT.fullmatch(segment) or segment in (".", "..") or len(segment) > _NAME_MAX:
            raise ValueError(f"invalid artifact key {key!r}")
    return key


def validate_prefix(prefix: str) -> str:
    """A key prefix (string prefix, as in S3): "" or complete segments each followed by "/",
    optionally ending in the start of a segment. ValueError otherwise."""
    if not isinstance(prefix, str):
        raise ValueError("artifact key prefix must be a string")
    if prefix == "":
        return prefix
    if len(prefix) > MAX_KEY_LENGTH or not _PREFIX.fullmatch(prefix):
        raise ValueError(f"invalid artifact key prefix {prefix!r}")
    if any(segment in (".", "..") for segment in prefix.split("/")):
        raise ValueError(f"invalid artifact key prefix {prefix!r}")
    return prefix


class ArtifactStoreUnavailable(OSError):
    """The store cannot be used right now (a bucket that cannot be reached, throttles, or
    refuses the credentials): a dependency outage (503 with `dependency: storage`), and a job
    meeting it is put back in the queue rather than failed."""

    def __init__(self, message: str, reason: str = "unavailable") -> None:
        super().__init__(message)
        self.reason = reason


@runtime_checkable
class ArtifactStore(Protocol):
    def writer(self, key: str) -> AbstractContextManager[BinaryIO]:
        """A binary file to write the object into. Atomic: the key appears (or is replaced) only
        when the block exits cleanly; on an exception the partial data is removed."""
        ...

    def put_bytes(self, key: str, data: bytes) -> int:
        """Store a small object whole; returns its size."""
        ...

    def open(self, key: str) -> BinaryIO:
        """The object for reading; FileNotFoundError if absent."""
        ...

    def local_path(self, key: str) -> Path | None:
        """A filesystem path for the object when the store has one (for efficient file
        responses), else None. Does not check that the object exists."""
        ...

    def presigned_url(self, key: str, expires_s: int, media_type: str | None = None,
                      filename: str | None = None) -> str | None:
        """A time-bound link that reads the object without this service (a bucket's presigned
        GET, answered with `media_type` and as an attachment named `filename`), or None when
        the store has none."""
        ...

    def size(self, key: str) -> int:
        """Size in bytes; FileNotFoundError if absent."""
        ...

    def exists(self, key: str) -> bool: ...

    def modified(self, key: str) -> float:
        """When the object was last written (epoch seconds); FileNotFoundError if absent."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object; a missing one is fine."""
        ...

    def delete_prefix(self, prefix: str) -> int:
        """Remove every object whose key starts with `prefix` (e.g. "jobs/<uuid>/"); returns how
        many. An empty prefix is refused."""
        ...

    def sweep(self, older_than_s: float, prefix: str = "") -> int:
        """Retention: remove objects (under `prefix`) last written more than `older_than_s`
        seconds ago, and abandoned partial writes as old; returns the number of objects."""
        ...


class LocalArtifactStore:
    """Objects as files below `root` (`<root>/<key>`). Writes go to a temp file in the target's
    own folder (same filesystem) and are moved into place with `os.replace`; folders left empty
    by a delete, a sweep or a failed write are removed.

    A filesystem cannot hold both `a/b` and `a/b/c` as objects (S3 can); keys in this project
    never need that (`uploads/<id>/input`, `jobs/<id>/<name>`), and such a write fails with an
    OSError. Writes are not fsync'ed: a machine crash can lose recent objects, never expose a
    partial one under its key.
    """

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).expanduser().resolve()

    def __repr__(self) -> str:
        return f"LocalArtifactStore({str(self.root)!r})"

    def space(self) -> tuple[int, bool]:
        """(free bytes, writable) of the folder's filesystem, for /health."""
        self.root.mkdir(parents=True, exist_ok=True)
        return shutil.disk_usage(self.root).free, os.access(self.root, os.W_OK)

    # -- writing ---------------------------------------------------------------------------

    @contextmanager
    def _writer(self, key: str) -> Iterator[BinaryIO]:
        path = self._path(key)
        tmp, f = self._open_temp(path.parent)
        try:
            with f:
                yield f
            os.replace(tmp, path)
        except BaseException:
            _unlink(tmp)
            self._prune(path.parent)
            raise

    def writer(self, key: str) -> AbstractContextManager[BinaryIO]:
        validate_key(key)  # at call time, not on entering the block
        return self._writer(key)

    def put_bytes(self, key: str, data: bytes) -> int:
        with self.writer(key) as f:
            f.write(data)
        return len(data)

    def _open_temp(self, folder: Path) -> tuple[Path, BinaryIO]:
        # A concurrent delete/sweep/failed write removes folders it leaves empty, possibly
        # between our mkdir and open (or between mkdir's own steps); create them again and retry.
        for attempt in range(_OPEN_RETRIES):
            tmp = folder / f"{_TMP_MARK}{uuid.uuid4().hex}"
            try:
                folder.mkdir(parents=True, exist_ok=True)
                return tmp, open(tmp, "xb")  # closed by the writer
            except (FileNotFoundError, FileExistsError):
                if attempt == _OPEN_RETRIES - 1:
                    raise  # e.g. an object where a folder is needed ("a" when writing "a/b")
        raise AssertionError("unreachable")

    # -- reading ---------------------------------------------------------------------------

    def open(self, key: str) -> BinaryIO:
        return open(self._path(key), "rb")  # the caller closes it

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    def presigned_url(self, key: str, expires_s: int, media_type: str | None = None,
                      filename: str | None = None) -> str | None:
        return None

    def size(self, key: str) -> int:
        path = self._path(key)
        st = path.stat()
        if not _is_regular(st):
            raise FileNotFoundError(f"no artifact {key!r}")
        return st.st_size

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def modified(self, key: str) -> float:
        st = self._path(key).stat()
        if not _is_regular(st):
            raise FileNotFoundError(f"no artifact {key!r}")
        return st.st_mtime

    # -- deleting --------------------------------------------------------------------------

    def delete(self, key: str) -> None:
        path = self._path(key)
        _unlink(path)
        self._prune(path.parent)

    def delete_prefix(self, prefix: str) -> int:
        if not validate_prefix(prefix):
            raise ValueError("delete_prefix needs a non-empty prefix")
        return self._remove_where(prefix, cutoff=None)

    def sweep(self, older_than_s: float, prefix: str = "") -> int:
        validate_prefix(prefix)
        return self._remove_where(prefix, cutoff=time.time() - older_than_s)

    def _remove_where(self, prefix: str, cutoff: float | None) -> int:
        """Remove objects whose key starts with `prefix` (and, with a cutoff, whose mtime is
        before it; temp files then too). Returns the number of objects removed."""
        folder_part, _, _ = prefix.rpartition("/")
        top = self.root / folder_part if folder_part else self.root
        if not top.is_dir():
            return 0
        removed = 0
        for dirpath, dirnames, filenames in os.walk(top, topdown=False, followlinks=False):
            here = Path(dirpath)
            for name in filenames:
                path = here / name
                key = path.relative_to(self.root).as_posix()
                if not key.startswith(prefix):
                    continue
                is_tmp = _TMP_MARK in name
                if is_tmp and cutoff is None:
                    continue  # a write in progress: never ours to delete by prefix
                try:
                    if cutoff is not None and path.lstat().st_mtime >= cutoff:
                        continue
                    path.unlink()
                except FileNotFoundError:  # another process removed or committed it
                    continue
                if not is_tmp:
                    removed += 1
            for name in dirnames:  # bottom-up walk: children are already handled
                _rmdir_if_empty(here / name)
        if folder_part:
            self._prune(top)
        return removed

    # -- helpers ---------------------------------------------------------------------------

    def _path(self, key: str) -> Path:
        return self.root / validate_key(key)

    def _prune(self, folder: Path) -> None:
        """Remove `folder` and its parents while empty, stopping at the root."""
        while folder != self.root and self.root in folder.parents:
            if not _rmdir_if_empty(folder):
                return
            folder = folder.parent


def _is_regular(st: os.stat_result) -> bool:
    return stat.S_ISREG(st.st_mode)


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _rmdir_if_empty(folder: Path) -> bool:
    try:
        folder.rmdir()
        return True
    except FileNotFoundError:
        return True
    except OSError:  # not empty (or not a folder): keep it
        return False


SUPPORTED_SCHEMES = ("file", "s3")


def artifact_store(settings: Settings) -> ArtifactStore:
    """The store `settings.artifacts_url` names (`store_from_url`); unset ->
    `<data_dir>/artifacts`."""
    url = settings.artifacts_url
    if not url:
        return LocalArtifactStore(settings.data_dir.expanduser() / "artifacts")
    return store_from_url(url, settings)


def store_from_url(url: str, settings: Settings) -> ArtifactStore:
    """`file:///abs/path` -> that folder; `s3://bucket/optional/prefix` -> that bucket
    (endpoint, region and link signing from the `s3_*` settings, credentials from boto3's
    chain). Other schemes raise ValueError."""
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        from serve_app.core.s3_artifacts import S3ArtifactStore

        if not parsed.netloc or parsed.query or parsed.fragment:
            raise ValueError(f"{url!r}: expected s3://bucket[/prefix]")
        return S3ArtifactStore(parsed.netloc, unquote(parsed.path),
                               endpoint_url=settings.s3_endpoint_url, region=settings.s3_region,
                               addressing_style=settings.s3_addressing_style,
                               presign_endpoint_url=settings.s3_presign_endpoint_url)
    if parsed.scheme != "file":
        raise ValueError(
            f"unsupported store URL {url!r}: supported schemes are "
            f"{', '.join(s + '://' for s in SUPPORTED_SCHEMES)} (e.g. file:///srv/bgremove/"
            "artifacts or s3://bucket/prefix)"
        )
    if parsed.netloc not in ("", "localhost") or parsed.query or parsed.fragment:
        raise ValueError(f"{url!r}: expected file:///absolute/path")
    path = unquote(parsed.path)
    if not path.startswith("/"):
        raise ValueError(f"{url!r}: expected file:///absolute/path")
    return LocalArtifactStore(Path(path))
