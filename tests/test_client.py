"""The Python client and the `bgremove remove|shotgun|video` commands: retry policy against a
real local HTTP server, and the operations against the running app."""

from __future__ import annotations

import http.server
import io
import json
import threading
import time
from typing import ClassVar

import httpx
import pytest
from PIL import Image

from serve_app.cli import main as cli
from serve_app.client import ApiError, Client

from conftest import disk_image, png_bytes


class Flaky(http.server.BaseHTTPRequestHandler):
    """429 (Retry-After: 1), then 503 (Retry-After: 0), then 200; /bad is a 400 with a body."""

    calls: ClassVar[list[float]] = []

    def do_GET(self):  # noqa: N802
        Flaky.calls.append(time.monotonic())
        if self.path == "/bad":
            self._send(400, b'{"message": "nope"}', {})
        elif len(Flaky.calls) == 1:
            self._send(429, b"{}", {"Retry-After": "1"})
        elif len(Flaky.calls) == 2:
            self._send(503, b"{}", {"Retry-After": "0"})
        else:
            self._send(200, b'{"ok": true}', {})

    def _send(self, status, body, headers):
        self.send_response(status)
        for k, v in {"Content-Type": "application/json", **headers}.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_client_honours_retry_after_and_raises_other_errors():
    Flaky.calls = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with Client(f"http://127.0.0.1:{server.server_port}", retries=3) as c:
            assert c.request("GET", "/x").json() == {"ok": True}
            assert len(Flaky.calls) == 3 and Flaky.calls[1] - Flaky.calls[0] >= 0.95
            with pytest.raises(ApiError) as err:
                c.request("GET", "/bad")
            assert err.value.status == 400 and err.value.body == {"message": "nope"}
    finally:
        server.shutdown()
    with (Client("http://127.0.0.1:9", retries=1, max_wait_s=0.1) as c,  # nothing listens
          pytest.raises(Exception, match="onnect")):
        c.request("GET", "/")


@pytest.mark.serve
def test_a_retried_submit_sends_the_same_idempotency_key():
    """The client retries a POST whose answer was lost; each create carries one
    Idempotency-Key that every retry repeats (so the service answers with the first job)."""
    keys: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        keys.append(request.headers.get("idempotency-key"))
        if request.url.path.endswith("/submit/v1") and len(keys) == 1:
            raise httpx.ReadError("connection reset before the answer", request=request)
        if request.url.path.startswith("/image/hd/result/"):
            return httpx.Response(200, content=b"png")
        return httpx.Response(202, json={"uuid": "00000000-0000-0000-0000-000000000001"})

    with Client("http://svc", retries=2, max_wait_s=0) as client:
        client.http = httpx.Client(base_url="http://svc", transport=httpx.MockTransport(handler))
        assert client.hd(png_bytes(disk_image())) == b"png"
        first = keys[:2]
        assert first[0] and first[0] == first[1]  # the retry repeats the key
        keys.clear()
        client.hd(png_bytes(disk_image()))
        assert keys[0] and keys[0] != first[0]  # a new call, a new key


def test_client_operations_against_the_app(base_url, api_key, tmp_path):
    from test_video_api import make_clip
    with Client(base_url, api_key) as c:
        png = c.remove(png_bytes(disk_image(64, 48)), "blur", blur_strength=10)
        assert Image.open(io.BytesIO(png)).size == (64, 48)
        rows = c.shotgun(png_bytes(disk_image(40, 30)), ["tiny", "tiny-human"])["results"]
        assert [r["status"] for r in rows] == ["success", "success"]
        seen = []
        clip = tmp_path / "c.mp4"
        clip.write_bytes(make_clip(1.0))
        webm = c.video(clip, on_progress=lambda done, total: seen.append((done, total)),
                       poll_s=0.2)
        assert webm[:4] == b"\x1aE\xdf\xa3"  # EBML: a WebM file
        assert all(0 <= d <= t for d, t in seen)
        assert "balance" in c.usage()
        with pytest.raises(ApiError) as err:
            c.remove(b"not an image")
        assert err.value.status == 400 and "message" in err.value.body


@pytest.mark.serve
def test_remove_command_on_a_folder(base_url, api_key, tmp_path, capsys):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    for i, path in enumerate([src / "a.png", src / "b.jpg", src / "sub" / "c.png"]):
        Image.fromarray(disk_image(32 + i, 24)).save(path)
    (src / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    code = cli(["remove", str(src), "--out", str(out), "--url", base_url, "--api-key", api_key,
                "--effect", "color", "--opt", "bg_color=#ff0000"])
    assert code == 1  # one input failed, and said so
    assert "broken.png" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png", "c.png"]
    assert Image.open(out / "c.png").size == (34, 24)


@pytest.mark.serve
def test_hd_shotgun_and_usage_commands(base_url, api_key, tmp_path, capsys):
    src = tmp_path / "big.png"
    Image.fromarray(disk_image(2100, 60)).save(src)  # wider than the regular endpoints take
    common = ["--url", base_url, "--api-key", api_key]
    assert cli(["hd", str(src), "--out", str(tmp_path / "hd.png"), *common]) == 0
    im = Image.open(tmp_path / "hd.png")
    assert im.mode == "RGBA" and im.size == (2100, 60)
    small = tmp_path / "small.png"
    Image.fromarray(disk_image(48, 32)).save(small)
    assert cli(["shotgun", str(small), "--out", str(tmp_path / "shot"), "--models",
                "tiny,tiny-human", *common]) == 0
    assert sorted(p.name for p in (tmp_path / "shot").iterdir()) == ["tiny-human.png", "tiny.png"]
    capsys.readouterr()
    assert cli(["usage", *common]) == 0
    usage = json.loads(capsys.readouterr().out)
    assert usage["key"] == "tests" and usage["balance"] > 0 and usage["operations"]



@pytest.mark.serve
def test_commands_print_no_log_lines_by_default(base_url, api_key, tmp_path):
    """Results and progress only: no `INFO HTTP Request: ...` lines in the progress bar; `-v`
    brings them back."""
    import subprocess
    import sys

    from test_video_api import make_clip

    photo = tmp_path / "a.png"
    Image.fromarray(disk_image(48, 32)).save(photo)
    clip = tmp_path / "c.mp4"
    clip.write_bytes(make_clip(1.0))
    common = ["--url", base_url, "--api-key", api_key]

    def run(*args: str) -> subprocess.CompletedProcess:
        done = subprocess.run([sys.executable, "-m", "serve_app.cli", *args], text=True,
                              capture_output=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return done

    for args in (["remove", str(photo), "--out", str(tmp_path / "out")],
                 ["video", str(clip), "--out", str(tmp_path / "v.webm")]):
        lines = run(*args, *common).stderr.replace("\r", "\n").splitlines()
        assert [line for line in lines if "INFO" in line or "HTTP Request" in line] == []
    verbose = run("-v", "remove", str(photo), "--out", str(tmp_path / "out2"), *common)
    assert "HTTP Request" in verbose.stderr
