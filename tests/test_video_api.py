"""Video API v1 (spec 000) against the real Ray Serve app: submit, progress, result files with
alpha or a background, the 4 s trim and its texts, and every documented 400."""

from __future__ import annotations

import io
import time

import av
import numpy as np
import pytest

from pipelines import video

from conftest import disk_image, png_bytes, static_http_server, unsized_clip

pytestmark = pytest.mark.serve


def make_clip(seconds: float, fps: int = 10, size=(96, 64), audio: bool = False) -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for i in range(int(seconds * fps)):
            img = disk_image(*size)
            img = np.roll(img, i, axis=1)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


def submit(client, data: bytes, **form):
    return client.post("/video/submit/v1", files={"video": ("clip.mp4", data, "video/mp4")},
                       data=form)


def wait_result(client, uuid: str, timeout: float = 90.0):
    deadline = time.monotonic() + timeout
    while True:
        resp = client.get(f"/video/result/{uuid}")
        if resp.status_code != 202:
            return resp
        body = resp.json()
        assert body["message"] == "Video is still processing" and body["uuid"] == uuid
        if "current_frame" in body:
            assert 0 <= body["current_frame"] <= body["total_frames"]
            assert 0 <= body["progress_percentage"] <= 100
        assert time.monotonic() < deadline, "video job did not finish"
        time.sleep(0.3)


def test_transparent_video_gives_webm_with_alpha(client, tmp_path):
    resp = submit(client, make_clip(2.0))
    assert resp.status_code == 202, resp.text
    body = resp.json()
    assert body == {"message": "Video submitted for processing", "uuid": body["uuid"],
                    "status": "processing", "duration": "2.00s"}
    done = wait_result(client, body["uuid"])
    assert done.status_code == 200, done.text
    assert done.headers["content-type"] == "video/webm"
    assert done.headers["cache-control"] == "no-cache"
    assert done.headers["content-disposition"] == (
        f"attachment; filename=processed_{body['uuid']}.webm")
    assert "x-video-warning" not in done.headers
    path = tmp_path / "out.webm"
    path.write_bytes(done.content)
    frames = list(video.read_alpha_webm(str(path)))
    assert len(frames) == 20 and frames[0].shape == (64, 96, 4)
    assert frames[0][32, 48, 3] > 200 and frames[0][3, 3, 3] < 40  # subject kept, corner clear
    info = video.probe(str(path))
    assert info.fps == 10 and (info.width, info.height) == (96, 64)
    gone = client.get(f"/video/result/{body['uuid']}")
    assert gone.status_code == 404 and gone.json() == {"detail": "Processed video file not found"}


def test_long_clip_is_trimmed_with_the_documented_texts(client, tmp_path):
    resp = submit(client, make_clip(5.2), bg_color="0,0,255")
    assert resp.status_code == 202, resp.text
    body = resp.json()
    assert body["duration"] == "5.20s" and body["processed_duration"] == "4s"
    assert body["warning"] == ("Video duration (5.20s) exceeds 4s limit. Only the first 4s "
                               "will be processed.")
    done = wait_result(client, body["uuid"])
    assert done.status_code == 200 and done.headers["content-type"] == "video/mp4"
    assert done.headers["x-video-warning"] == "Original video (5.20s) was trimmed to 4 seconds"
    assert done.headers["x-original-duration"] == "5.20s"
    assert done.headers["x-processed-duration"] == "4.00s"
    path = tmp_path / "out.mp4"
    path.write_bytes(done.content)
    frames = list(video.iter_frames(str(path)))
    assert len(frames) == 40  # 4 s at 10 fps
    corner = frames[0].rgb[3, 3]
    assert corner[2] > 180 and corner[0] < 80  # the blue background


@pytest.fixture(scope="module")
def files_server():
    with static_http_server({"/bg.png": png_bytes(disk_image(40, 30)),
                             "/notes.txt": b"just some text"}) as url:
        yield url


def test_background_image_from_a_url(client, files_server):
    resp = submit(client, make_clip(1.0), bg_image_url=f"{files_server}/bg.png")
    assert resp.status_code == 202, resp.text
    done = wait_result(client, resp.json()["uuid"])
    assert done.status_code == 200 and done.headers["content-type"] == "video/mp4"


def _audio_only() -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp",
                                           layout="mono")
        frame.sample_rate = 16000
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


@pytest.mark.parametrize("case", ["text", "damaged", "audio_only", "bad_color", "not_image",
                                  "blocked"])
def test_documented_400s(client, files_server, case):
    clip = make_clip(0.5)
    if case == "text":
        resp = submit(client, b"hello, I am not a video")
        assert resp.status_code == 400 and resp.json() == {"detail": "File must be a video"}
    elif case == "damaged":  # a video container cut short keeps the decoder's reason
        resp = submit(client, clip[: len(clip) // 3])
        assert resp.status_code == 400 and resp.json()["detail"].startswith("Invalid video file")
    elif case == "audio_only":
        resp = submit(client, _audio_only())
        assert resp.status_code == 400 and resp.json() == {"detail": "File must be a video"}
    elif case == "bad_color":
        resp = submit(client, clip, bg_color="red")
        assert resp.status_code == 400
        assert resp.json() == {"detail": "bg_color must be in format 'R,G,B' (e.g., '255,0,0')"}
    elif case == "not_image":
        resp = submit(client, clip, bg_image_url=f"{files_server}/notes.txt")
        assert resp.status_code == 400 and resp.json() == {"detail": "URL must point to an image file"}
    else:
        resp = submit(client, clip, bg_image_url="http://169.254.169.254/bg.png")
        assert resp.status_code == 400
        assert resp.json()["detail"].startswith("Failed to download background image: ")


def test_unknown_task(client):
    resp = client.get("/video/result/00000000-0000-0000-0000-000000000000")
    assert resp.status_code == 404
    assert resp.json() == {"message": "Task not found", "status": "not_found"}


def test_recording_without_a_container_duration_is_measured_and_trimmed(client, tmp_path):
    """A MediaRecorder-style WebM (no duration in its header), 10 s: the submit states its real
    length and the trim warning, and only the first 4 s are processed."""
    resp = client.post("/video/submit/v1",
                       files={"video": ("rec.webm", unsized_clip("webm-vp9", 10.0), "video/webm")},
                       data={"bg_color": "0,0,255"})
    assert resp.status_code == 202, resp.text
    body = resp.json()
    assert body["duration"] == "10.00s" and body["processed_duration"] == "4s"
    assert body["warning"] == ("Video duration (10.00s) exceeds 4s limit. Only the first 4s "
                               "will be processed.")
    done = wait_result(client, body["uuid"])
    assert done.status_code == 200, done.text
    assert done.headers["x-original-duration"] == "10.00s"
    path = tmp_path / "out.mp4"
    path.write_bytes(done.content)
    assert len(list(video.iter_frames(str(path)))) == 40
