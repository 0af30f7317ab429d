"""An artifact store in an S3-compatible bucket (AWS S3, MinIO, SeaweedFS, Ceph RGW, GCS's XML API).

boto3 rather than fsspec/s3fs: the store needs exactly the S3 calls (multipart upload with abort,
ranged GET, presigned GET, paged listing, batched delete) with control over each, boto3 is the
SDK every S3-compatible server is tested against, and its default credential chain covers the
environment (`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`), config files, EKS service accounts
(IRSA, `AWS_WEB_IDENTITY_TOKEN_FILE`) and instance profiles without code here; s3fs adds an
async layer and a filesystem abstraction this interface does not need.

Objects live under `<prefix>/<key>`. Writes stream: up to one part (8 MiB) is buffered, a larger
object becomes a multipart upload that is completed when the writer exits cleanly and aborted on
an exception, so a key appears only whole, as with the local store. Reads are a streaming GET;
seeking reopens the body at the new offset with a `Range` (pinned to the object's ETag). Errors
that mean the bucket cannot be reached (connection refused, timeouts, 5xx, throttling, denied
credentials) become `ArtifactStoreUnavailable`, which the service maps to 503 like a database
outage; a missing object is `FileNotFoundError`, as on disk.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, BinaryIO, TypeVar

from serve_app.core.artifacts import ArtifactStoreUnavailable, validate_key, validate_prefix

PART_SIZE = 8 * 1024 * 1024  # S3's minimum part is 5 MiB; at most 10,000 parts (80 GB here)
_MISSING = {"404", "NoSuchKey", "NotFound", "NoSuchUpload"}
_NO_BUCKET = {"NoSuchBucket"}
_DENIED = {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch",
           "ExpiredToken", "InvalidToken"}
T = TypeVar("T")


def _code(exc: BaseException) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def _status(exc: BaseException) -> int:
    response = getattr(exc, "response", None) or {}
    return int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


class S3ArtifactStore:
    """Objects in `bucket` under `prefix`. `client` is a boto3 S3 client (made lazily from the
    other arguments when not given: one per process, shared by threads, as boto3 allows);
    `presign_client` signs download links, e.g. with the public endpoint when the service
    reaches the bucket at an in-cluster address."""

    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None,
                 region: str | None = None, addressing_style: str = "auto",
                 presign_endpoint_url: str | None = None, connect_timeout_s: float = 3.0,
                 read_timeout_s: float = 30.0, client: Any = None,
                 presign_client: Any = None) -> None:
        if not bucket:
            raise ValueError("an S3 artifact store needs a bucket")
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        if self.prefix:
            validate_prefix(self.prefix)
        self._options: dict[str, Any] = {"endpoint_url": endpoint_url, "region": region,
                         "addressing_style": addressing_style,
                         "connect_timeout_s": connect_timeout_s, "read_timeout_s": read_timeout_s}
        self._presign_endpoint = presign_endpoint_url
        self._client, self._presign_client = client, presign_client
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"S3ArtifactStore(s3://{self.bucket}/{self.prefix})"

    # -- the client ------------------------------------------------------------------------

    def _make_client(self, endpoint_url: str | None) -> Any:
        import boto3
        from botocore.config import Config

        o = self._options
        config = Config(signature_version="s3v4", connect_timeout=o["connect_timeout_s"],
                        read_timeout=o["read_timeout_s"],
                        retries={"max_attempts": 3, "mode": "standard"},
                        s3={"addressing_style": o["addressing_style"]})
        return boto3.session.Session().client("s3", endpoint_url=endpoint_url,
                                              region_name=o["region"], config=config)

    @property
    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = self._make_client(self._options["endpoint_url"])
            return self._client

    def _call(self, fn: Callable[..., T], /, **kwargs: Any) -> T:
        """One S3 call with errors in this project's terms."""
        try:
            return fn(**kwargs)
        except Exception as exc:
            raise _translate(exc, kwargs.get("Key")) from exc

    def _name(self, key: str) -> str:
        return self.prefix + validate_key(key)

    # -- writing ---------------------------------------------------------------------------

    def writer(self, key: str) -> AbstractContextManager[BinaryIO]:
        name = self._name(key)  # validated at call time, not on entering the block
        return self._writer(name)

    @contextmanager
    def _writer(self, name: str) -> Iterator[BinaryIO]:
        out = _MultipartWriter(self, name)
        try:
            yield out  # type: ignore[misc]
            out.finish()
        except BaseException:
            out.abort()
            raise

    def put_bytes(self, key: str, data: bytes) -> int:
        self._call(self.client.put_object, Bucket=self.bucket, Key=self._name(key), Body=data)
        return len(data)

    # -- reading ---------------------------------------------------------------------------

    def open(self, key: str) -> BinaryIO:
        return _ObjectReader(self, self._name(key))  # type: ignore[return-value]

    def local_path(self, key: str) -> None:
        validate_key(key)
        return None

    def size(self, key: str) -> int:
        head = self._call(self.client.head_object, Bucket=self.bucket, Key=self._name(key))
        return int(head["ContentLength"])

    def modified(self, key: str) -> float:
        head = self._call(self.client.head_object, Bucket=self.bucket, Key=self._name(key))
        return float(head["LastModified"].timestamp())

    def exists(self, key: str) -> bool:
        try:
            self.size(key)
        except FileNotFoundError:
            return False
        return True

    def presigned_url(self, key: str, expires_s: int, media_type: str | None = None,
                      filename: str | None = None) -> str:
        """A GET link to the object valid for `expires_s` seconds (1 s to 7 days: SigV4's
        limit), signed offline with the store's credentials; the bucket answers it with
        `media_type` and, given a `filename`, as an attachment of that name. With temporary
        credentials (IRSA, instance profiles) a link also ends when they do."""
        expires_s = max(1, min(int(expires_s), 7 * 24 * 3600))
        with self._lock:
            if self._presign_client is None:
                self._presign_client = (self._make_client(self._presign_endpoint)
                                        if self._presign_endpoint else None)
        signer = self._presign_client or self.client
        params = {"Bucket": self.bucket, "Key": self._name(key)}
        if media_type:
            params["ResponseContentType"] = media_type
        if filename:
            params["ResponseContentDisposition"] = f'attachment; filename="{filename}"'
        return self._call(signer.generate_presigned_url, ClientMethod="get_object",
                          Params=params, ExpiresIn=expires_s)

    # -- deleting --------------------------------------------------------------------------

    def delete(self, key: str) -> None:
        self._call(self.client.delete_object, Bucket=self.bucket, Key=self._name(key))

    def delete_prefix(self, prefix: str) -> int:
        if not validate_prefix(prefix):
            raise ValueError("delete_prefix needs a non-empty prefix")
        return self._delete(name for name, _ in self._list(prefix))

    def sweep(self, older_than_s: float, prefix: str = "") -> int:
        validate_prefix(prefix)
        cutoff = datetime.now(UTC) - timedelta(seconds=older_than_s)
        removed = self._delete(name for name, modified in self._list(prefix) if modified < cutoff)
        self._abort_uploads(prefix, cutoff)  # abandoned multipart uploads: the temp files here
        return removed

    def _list(self, prefix: str) -> Iterator[tuple[str, datetime]]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix + prefix)
        try:
            for page in pages:
                for obj in page.get("Contents", ()):
                    yield obj["Key"], obj["LastModified"]
        except Exception as exc:
            raise _translate(exc, None) from exc

    def _delete(self, names: Iterator[str] | Any) -> int:
        removed, batch = 0, []
        for name in names:
            batch.append({"Key": name})
            if len(batch) == 1000:  # DeleteObjects' limit
                removed += self._delete_batch(batch)
                batch = []
        if batch:
            removed += self._delete_batch(batch)
        return removed

    def _delete_batch(self, batch: list[dict[str, str]]) -> int:
        answer = self._call(self.client.delete_objects, Bucket=self.bucket,
                            Delete={"Objects": batch, "Quiet": True})
        errors = answer.get("Errors") or []
        if errors:
            raise ArtifactStoreUnavailable(
                f"the bucket refused to delete {len(errors)} object(s): "
                f"{errors[0].get('Code')} {errors[0].get('Message', '')}".strip())
        return len(batch)

    def _abort_uploads(self, prefix: str, cutoff: datetime) -> None:
        pages = self.client.get_paginator("list_multipart_uploads").paginate(
            Bucket=self.bucket, Prefix=self.prefix + prefix)
        try:
            stale = [u for page in pages for u in page.get("Uploads", ())
                     if u["Initiated"] < cutoff]
        except Exception as exc:
            raise _translate(exc, None) from exc
        for upload in stale:
            try:
                self._call(self.client.abort_multipart_upload, Bucket=self.bucket,
                           Key=upload["Key"], UploadId=upload["UploadId"])
            except FileNotFoundError:  # finished or aborted meanwhile
                continue

    # -- health ----------------------------------------------------------------------------

    def reachable(self) -> None:
        """One round-trip: a one-key listing of the store's own prefix (what a policy scoped to
        the prefix allows; HeadBucket needs more); ArtifactStoreUnavailable when the bucket
        cannot be used (unreachable, missing, credentials refused)."""
        self._call(self.client.list_objects_v2, Bucket=self.bucket, Prefix=self.prefix,
                   MaxKeys=1)


def _translate(exc: BaseException, key: str | None) -> BaseException:
    """FileNotFoundError for a missing object; ArtifactStoreUnavailable for an outage or a
    refusal; anything else unchanged (a bug, shown as such)."""
    from botocore.exceptions import ClientError

    if isinstance(exc, ClientError):
        code, status = _code(exc), _status(exc)
        if code in _NO_BUCKET:  # a deleted or misnamed bucket: nothing can be stored
            return ArtifactStoreUnavailable("the bucket does not exist", reason="no_bucket")
        if code in _MISSING or status == 404:
            return FileNotFoundError(f"no artifact {key!r}" if key else code)
        if code in _DENIED or status == 403:
            return ArtifactStoreUnavailable(f"the bucket refused the credentials ({code})",
                                            reason="denied")
        if status >= 500 or status == 429 or code in (
                "SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout"):
            return ArtifactStoreUnavailable(f"the bucket answered {status} {code}")
        return exc
    if isinstance(exc, _OUTAGES):  # connection refused, timeouts, DNS, no credentials
        return ArtifactStoreUnavailable(f"the bucket cannot be reached ({type(exc).__name__})")
    return exc  # e.g. ParamValidationError: a bug or a bad setting, shown as such


def _outage_types() -> tuple[type[BaseException], ...]:
    from botocore import exceptions as e

    return (e.HTTPClientError, e.ConnectionError, e.NoCredentialsError,
            e.PartialCredentialsError, e.CredentialRetrievalError, e.NoRegionError)


_OUTAGES: tuple[type[BaseException], ...] = _outage_types()


class _MultipartWriter(io.RawIOBase):
    """Buffers writes into parts; small objects are one PutObject at the end."""

    def __init__(self, store: S3ArtifactStore, name: str) -> None:
        super().__init__()
        self.store, self.name = store, name
        self.buffer = bytearray()
        self.upload_id: str | None = None
        self.parts: list[dict[str, Any]] = []

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self.buffer += view
        while len(self.buffer) >= PART_SIZE:
            self._send_part(bytes(self.buffer[:PART_SIZE]))
            del self.buffer[:PART_SIZE]
        return len(view)

    def _send_part(self, chunk: bytes) -> None:
        s = self.store
        if self.upload_id is None:
            started = s._call(s.client.create_multipart_upload, Bucket=s.bucket, Key=self.name)
            self.upload_id = started["UploadId"]
        number = len(self.parts) + 1
        sent = s._call(s.client.upload_part, Bucket=s.bucket, Key=self.name,
                       UploadId=self.upload_id, PartNumber=number, Body=chunk)
        self.parts.append({"PartNumber": number, "ETag": sent["ETag"]})

    def finish(self) -> None:
        s = self.store
        if self.upload_id is None:
            s._call(s.client.put_object, Bucket=s.bucket, Key=self.name, Body=bytes(self.buffer))
        else:
            if self.buffer or not self.parts:
                self._send_part(bytes(self.buffer))
            s._call(s.client.complete_multipart_upload, Bucket=s.bucket, Key=self.name,
                    UploadId=self.upload_id, MultipartUpload={"Parts": self.parts})
        self.buffer = bytearray()
        self.upload_id = None
        super().close()

    def abort(self) -> None:
        self.buffer = bytearray()
        if self.upload_id is not None:
            s = self.store
            try:
                s.client.abort_multipart_upload(Bucket=s.bucket, Key=self.name,
                                                UploadId=self.upload_id)
            except Exception:  # noqa: BLE001, S110 - the sweep aborts what is left
                pass
            self.upload_id = None
        super().close()


class _ObjectReader(io.RawIOBase):
    """A seekable read-only view of one object: a streaming GET, reopened with a Range (pinned to
    the ETag first seen) after a seek. Opening checks that the object exists."""

    def __init__(self, store: S3ArtifactStore, name: str) -> None:
        super().__init__()
        self.store, self.name = store, name
        self.pos = 0
        self.body: Any = None
        self.etag: str | None = None
        answer = self._get(None)
        self.size = int(answer["ContentLength"])
        self.etag = answer.get("ETag")
        self.body = answer["Body"]
        self.body_pos = 0

    def _get(self, start: int | None) -> dict[str, Any]:
        s = self.store
        extra: dict[str, Any] = {}
        if start is not None:
            extra["Range"] = f"bytes={start}-"
            if self.etag:
                extra["IfMatch"] = self.etag
        try:
            return s._call(s.client.get_object, Bucket=s.bucket, Key=self.name, **extra)
        except Exception as exc:
            if _code(exc.__cause__ or exc) == "PreconditionFailed":  # replaced meanwhile
                raise FileNotFoundError(f"artifact {self.name!r} changed while read") from exc
            raise

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self.pos = base + offset
        return self.pos

    def readinto(self, buffer: Any) -> int:
        if self.pos >= self.size:
            return 0
        if self.body is None or self.body_pos != self.pos:
            self._close_body()
            self.body, self.body_pos = self._get(self.pos)["Body"], self.pos
        view = memoryview(buffer).cast("B")
        try:
            data = self.body.read(len(view))
        except Exception as exc:
            raise _translate(exc, self.name) from exc
        view[:len(data)] = data
        self.pos += len(data)
        self.body_pos += len(data)
        return len(data)

    def read(self, size: int = -1) -> bytes:
        left = max(0, self.size - self.pos)
        size = left if size is None or size < 0 else min(size, left)
        buffer = bytearray(size)
        got = 0
        while got < size:
            n = self.readinto(memoryview(buffer)[got:])
            if not n:
                break
            got += n
        return bytes(buffer[:got])

    def readall(self) -> bytes:
        return self.read(-1)

    def _close_body(self) -> None:
        if self.body is not None:
            self.body.close()
            self.body = None

    def close(self) -> None:
        self._close_body()
        super().close()
