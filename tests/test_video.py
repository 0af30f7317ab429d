"""pipelines.video: probing, streaming decode, writers (alpha, audio) and the trim strings.

Every clip is synthetic and tiny (made here with PyAV), so the whole module runs in seconds.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from pipelines import video
from pipelines.errors import InvalidRequest

from conftest import UNSIZED_CLIPS, unsized_clip

W, H = 96, 64


def disk_frame(i: int, n: int, width: int = W, height: int = H) -> tuple[np.ndarray, tuple]:
    """A bright disk moving left to right on a dark background; returns (rgb, centre)."""
    cx = int(16 + (width - 32) * i / max(1, n - 1))
    cy = height // 2
    yy, xx = np.mgrid[0:height, 0:width]
    rgb = np.full((height, width, 3), 20, dtype=np.uint8)
    rgb[(yy - cy) ** 2 + (xx - cx) ** 2 <= 10**2] = 235
    return rgb, (cx, cy)


def make_clip(
    path,
    fps=Fraction(10),
    seconds: float = 1.0,
    audio: bool = False,
    rotation: int | None = None,
    width: int = W,
    height: int = H,
):
    n = round(seconds * fps)
    with av.open(str(path), "w") as c:
        vs = c.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
        vs.options = {"preset": "ultrafast", "crf": "18"}
        if rotation is not None:
            vs.set_display_rotation(rotation)
        aus = None
        if audio:
            aus = c.add_stream("aac", rate=44100)
            aus.layout = "mono"
        for i in range(n):
            rgb, _ = disk_frame(i, n, width, height)
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            frame.time_base = 1 / fps
            for p in vs.encode(frame):
                c.mux(p)
        for p in vs.encode(None):
            c.mux(p)
        if aus is not None:
            rate, size = 44100, 1024
            total = int(seconds * rate)
            for start in range(0, total, size):
                t = np.arange(start, min(total, start + size)) / rate
                tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None, :]
                af = av.AudioFrame.from_ndarray(tone, format="fltp", layout="mono")
                af.sample_rate = rate
                af.pts = start
                for p in aus.encode(af):
                    c.mux(p)
            for p in aus.encode(None):
                c.mux(p)
    return n


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("video") / "disk.mp4"
    make_clip(path)
    return str(path)


@pytest.fixture(scope="module")
def clip_audio(tmp_path_factory):
    path = tmp_path_factory.mktemp("video") / "tone.mp4"
    make_clip(path, audio=True)
    return str(path)


def audio_duration(path) -> float:
    """Seconds of decoded audio samples in the first audio stream."""
    with av.open(str(path)) as c:
        stream = c.streams.audio[0]
        samples = sum(f.samples for f in c.decode(stream))
        return samples / stream.codec_context.sample_rate


# --- probe ---------------------------------------------------------------------------------


def test_probe_reports_size_rate_duration(clip, clip_audio):
    info = video.probe(clip)
    assert (info.width, info.height) == (W, H)
    assert info.fps == Fraction(10) and isinstance(info.fps, Fraction)
    assert info.duration_s == pytest.approx(1.0, abs=0.05)
    assert info.frame_count == 10
    assert info.has_audio is False
    assert info.codec == "h264"
    assert info.rotation == 0
    assert video.probe(clip_audio).has_audio is True


def test_probe_ntsc_rate_is_exact(tmp_path):
    path = tmp_path / "ntsc.mp4"
    make_clip(path, fps=Fraction(30000, 1001), seconds=0.5)
    assert video.probe(str(path)).fps == Fraction(30000, 1001)


def test_probe_rejects_text_file(tmp_path):
    path = tmp_path / "notes.mp4"
    path.write_text("this is not a video at all\n" * 50)
    with pytest.raises(InvalidRequest) as err:
        video.probe(str(path))
    msg = err.value.message
    assert msg == video.NOT_A_VIDEO_MESSAGE
    assert str(tmp_path) not in msg  # no server paths in client-facing text


def test_probe_rejects_audio_only_file(tmp_path):
    path = tmp_path / "tone.m4a"
    with av.open(str(path), "w", format="mp4") as c:
        s = c.add_stream("aac", rate=44100)
        s.layout = "mono"
        af = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp",
                                        layout="mono")
        af.sample_rate, af.pts = 44100, 0
        for p in [*s.encode(af), *s.encode(None)]:
            c.mux(p)
    with pytest.raises(InvalidRequest) as err:
        video.probe(str(path))
    assert err.value.message == "File must be a video"


def test_probe_rejects_truncated_file(clip, tmp_path):
    data = Path(clip).read_bytes()
    path = tmp_path / "cut.mp4"
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(InvalidRequest) as err:
        video.probe(str(path))
    assert err.value.message.startswith("Invalid video file: ")
    assert len(err.value.message) > len("Invalid video file: ")


# --- iter_frames ---------------------------------------------------------------------------


def test_iter_frames_order_pts_and_content(clip):
    frames = list(video.iter_frames(clip))
    assert [f.index for f in frames] == list(range(10))
    pts = [f.pts_s for f in frames]
    assert pts == sorted(pts) and len(set(pts)) == 10
    assert pts[0] == pytest.approx(0.0, abs=1e-6)
    assert pts[1] == pytest.approx(0.1, abs=1e-6)
    for f in frames:
        assert f.rgb.shape == (H, W, 3) and f.rgb.dtype == np.uint8
        _, (cx, cy) = disk_frame(f.index, 10)
        assert f.rgb[cy, cx].mean() > 200  # the disk's centre is bright
        assert f.rgb[2, 2].mean() < 50  # the background is dark


def test_iter_frames_stops_at_max_duration(clip):
    frames = list(video.iter_frames(clip, max_duration_s=0.5))
    assert len(frames) == 5
    assert all(f.pts_s < 0.5 for f in frames)


def test_iter_frames_is_lazy(clip):
    it = video.iter_frames(clip)
    first = next(it)
    assert first.index == 0
    it.close()  # closes the container without decoding the rest


@pytest.mark.parametrize("rotation", [90, -90])
def test_iter_frames_honours_display_rotation(tmp_path, rotation):
    path = tmp_path / "rot.mp4"
    make_clip(path, rotation=rotation, seconds=0.3)
    info = video.probe(str(path))
    assert info.rotation == rotation % 360
    assert info.display_size == (H, W)
    frames = list(video.iter_frames(str(path)))
    raw = disk_frame(0, 3)[0]
    expected = np.rot90(raw, k=(rotation % 360) // 90)  # counter-clockwise, as FFmpeg displays
    assert frames[0].rgb.shape == (W, H, 3)
    assert np.abs(frames[0].rgb.astype(int) - expected.astype(int)).mean() < 6


# --- writers -------------------------------------------------------------------------------


def rgba_frames(n: int, width: int = W, height: int = H):
    for i in range(n):
        rgb, _ = disk_frame(i, n, width, height)
        alpha = np.zeros((height, width, 1), np.uint8)
        alpha[:, : width // 2] = 255
        yield np.concatenate([rgb, alpha], axis=2)


def test_webm_writer_keeps_alpha_and_rate(tmp_path):
    path = tmp_path / "out.webm"
    fps = Fraction(25)
    with video.VideoWriter(str(path), "webm", W, H, fps) as w:
        for frame in rgba_frames(12):
            w.write(frame)
    decoded = list(video.read_alpha_webm(str(path)))
    assert len(decoded) == 12
    for rgba in decoded:
        assert rgba.shape == (H, W, 4)
        assert rgba[:, : W // 2 - 4, 3].mean() > 200
        assert rgba[:, W // 2 + 4 :, 3].mean() < 55
    info = video.probe(str(path))
    assert info.fps == fps and (info.width, info.height) == (W, H)
    assert info.codec == "vp9"
    # iter_frames also reads it (through libvpx), as RGB
    assert len(list(video.iter_frames(str(path)))) == 12


def test_webm_writer_rgb_input_is_opaque(tmp_path):
    path = tmp_path / "opaque.webm"
    with video.VideoWriter(str(path), "webm", W, H, 10) as w:
        for i in range(3):
            w.write(disk_frame(i, 3)[0])
    alphas = [f[:, :, 3] for f in video.read_alpha_webm(str(path))]
    assert len(alphas) == 3 and all(a.min() > 240 for a in alphas)


def test_mp4_writer_h264_rate_and_size(tmp_path):
    path = tmp_path / "out.mp4"
    fps = Fraction(30000, 1001)
    with video.VideoWriter(str(path), "mp4", W, H, fps) as w:
        for i in range(8):
            w.write(disk_frame(i, 8)[0])
    info = video.probe(str(path))
    assert info.codec == "h264"
    assert info.fps == fps
    assert (info.width, info.height) == (W, H)
    frames = list(video.iter_frames(str(path)))
    assert len(frames) == 8
    _, (cx, cy) = disk_frame(3, 8)
    assert frames[3].rgb[cy, cx].mean() > 200


def test_mp4_writer_pads_odd_size(tmp_path):
    path = tmp_path / "odd.mp4"
    with video.VideoWriter(str(path), "mp4", 63, 47, 10) as w:
        assert w.encoded_size == (64, 48)
        for frame in rgba_frames(3, 63, 47):  # RGBA is accepted; alpha is dropped
            w.write(frame)
    info = video.probe(str(path))
    assert (info.width, info.height) == (64, 48)
    assert len(list(video.iter_frames(str(path)))) == 3


def test_mov_writer_prores_4444_keeps_alpha(tmp_path):
    path = tmp_path / "out.mov"
    with video.VideoWriter(str(path), "mov", W, H, 10) as w:
        for frame in rgba_frames(4):
            w.write(frame)
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        assert stream.codec_context.name == "prores"
        decoded = list(c.decode(stream))
    assert len(decoded) == 4
    # FFmpeg 8's ProRes decoder hands 4444 out as 12-bit (yuva444p12le); older ones as 10-bit.
    assert decoded[0].format.name in ("yuva444p10le", "yuva444p12le")
    rgba = decoded[0].to_ndarray(format="rgba")
    assert rgba[:, : W // 2 - 2, 3].mean() > 200
    assert rgba[:, W // 2 + 2 :, 3].mean() < 55


def test_writer_rejects_wrong_frame_size(tmp_path):
    with video.VideoWriter(str(tmp_path / "x.webm"), "webm", W, H, 10) as w:
        with pytest.raises(ValueError):
            w.write(np.zeros((H + 2, W, 4), np.uint8))
        w.write(np.zeros((H, W, 4), np.uint8))


def test_writer_rejects_unknown_format(tmp_path):
    with pytest.raises(ValueError):
        video.VideoWriter(str(tmp_path / "x.avi"), "avi", W, H, 10)


# --- audio ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["webm", "mp4", "mov"])
def test_writer_copies_trimmed_audio(clip_audio, tmp_path, fmt):
    path = tmp_path / f"out.{fmt}"
    frames = list(video.iter_frames(clip_audio, max_duration_s=0.5))
    with video.VideoWriter(
        str(path), fmt, W, H, Fraction(10), audio_from=clip_audio, max_duration_s=0.5
    ) as w:
        for f in frames:
            w.write(f.rgb)
    assert w.audio_error is None and w.has_audio
    info = video.probe(str(path))
    assert info.has_audio
    assert audio_duration(path) == pytest.approx(0.5, abs=0.1)
    assert len(list(video.iter_frames(str(path)))) == 5


def test_writer_without_source_audio_writes_video_only(clip, tmp_path):
    path = tmp_path / "silent.webm"
    with video.VideoWriter(str(path), "webm", W, H, 10, audio_from=clip) as w:
        w.write(np.zeros((H, W, 4), np.uint8))
    assert w.audio_error is None and not w.has_audio
    assert not video.probe(str(path)).has_audio


def test_writer_audio_failure_never_fails_video(tmp_path):
    bogus = tmp_path / "bogus.mp4"
    bogus.write_bytes(b"nope" * 100)
    path = tmp_path / "out.webm"
    with video.VideoWriter(str(path), "webm", W, H, 10, audio_from=str(bogus)) as w:
        for frame in rgba_frames(3):
            w.write(frame)
    assert w.audio_error and not w.has_audio
    assert str(tmp_path) not in w.audio_error
    assert len(list(video.read_alpha_webm(str(path)))) == 3
    assert not video.probe(str(path)).has_audio


# --- strings -------------------------------------------------------------------------------


def test_duration_and_warning_strings():
    assert video.format_duration(3.5) == "3.50s"
    assert video.format_duration(5.2) == "5.20s"
    assert video.format_limit(4) == "4s"
    assert video.format_limit(4.0) == "4s"
    assert video.format_limit(2.5) == "2.50s"
    assert video.submit_trim_warning(5.2, 4) == (
        "Video duration (5.20s) exceeds 4s limit. Only the first 4s will be processed."
    )
    assert video.result_trim_warning(5.2, 4) == "Video was trimmed from 5.20s to 4.00s"
    assert video.header_trim_warning(5.2, 4) == "Original video (5.20s) was trimmed to 4 seconds"
    assert video.is_trimmed(5.2, 4) and not video.is_trimmed(3.5, 4)
    assert not video.is_trimmed(5.2, None)
    assert video.processed_duration(5.2, 4) == 4
    assert video.processed_duration(3.5, 4) == 3.5


# --- clips whose container states no duration (MediaRecorder WebM, fragmented MP4) ---------


@pytest.mark.parametrize("kind", sorted(UNSIZED_CLIPS))
def test_probe_reads_duration_from_packets_when_the_header_has_none(tmp_path, kind):
    path = tmp_path / f"{kind}.bin"
    path.write_bytes(unsized_clip(kind, seconds=3.1, fps=10))  # 31 frames
    info = video.probe(str(path))
    assert info.duration_known
    assert info.duration_s == pytest.approx(3.1, abs=0.051)
    assert info.frame_count == 31


@pytest.mark.parametrize("kind", sorted(UNSIZED_CLIPS))
def test_trim_holds_for_clips_without_a_duration(tmp_path, kind):
    path = tmp_path / f"{kind}.bin"
    path.write_bytes(unsized_clip(kind, seconds=10, fps=10))
    info = video.probe(str(path))
    assert info.duration_s == pytest.approx(10.0, abs=0.051)
    assert video.is_trimmed(info.duration_s, 4.0)
    assert len(list(video.iter_frames(str(path), max_duration_s=4.0))) == 40


def test_progress_of_a_clip_without_a_duration_is_honest(tmp_path):
    from pipelines.render import render_video

    path = tmp_path / "rec.webm"
    path.write_bytes(unsized_clip("webm-vp9", seconds=6, fps=10))
    reports = []
    mask = np.full((64, 96), 255, np.uint8)
    result = render_video(str(path), str(tmp_path / "out.webm"), lambda rgb: (lambda: mask),
                          output_format="webm", max_duration_s=4.0,
                          on_progress=lambda done, total: reports.append((done, total)))
    assert result.frames == 40 and result.processed_duration_s == 4.0
    assert result.original_duration_s == pytest.approx(6.0, abs=0.051)
    assert {total for _, total in reports} == {40}  # never "done == total" before the end
    assert reports[0] == (1, 40) and reports[-1] == (40, 40)


def test_a_clip_whose_length_cannot_be_known_is_charged_for_what_was_processed(tmp_path,
                                                                               monkeypatch):
    """Nothing in the file says how long it is: the seconds charged are the frames written
    over the rate, not 0 (which would make such clips free)."""
    import dataclasses

    from pipelines.render import render_video

    path = tmp_path / "rec.webm"
    path.write_bytes(unsized_clip("webm-vp9", seconds=3, fps=10))
    real_probe = video.probe
    monkeypatch.setattr(video, "probe", lambda p: dataclasses.replace(
        real_probe(p), duration_s=0.0, duration_known=False))
    mask = np.full((64, 96), 255, np.uint8)
    result = render_video(str(path), str(tmp_path / "out.webm"), lambda rgb: (lambda: mask),
                          output_format="webm")
    assert result.frames == 30 and result.processed_duration_s == pytest.approx(3.0)


def test_text_file_is_not_a_video_but_a_damaged_video_keeps_the_decoder_reason(tmp_path):
    text = tmp_path / "notes.webm"
    text.write_text("this is not a video at all\n" * 50)
    with pytest.raises(InvalidRequest) as err:
        video.probe(str(text))
    assert err.value.message == video.NOT_A_VIDEO_MESSAGE
    image = tmp_path / "photo.mp4"
    image.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    with pytest.raises(InvalidRequest) as err:
        video.probe(str(image))
    assert err.value.message == video.NOT_A_VIDEO_MESSAGE
    damaged = tmp_path / "damaged.webm"
    damaged.write_bytes(unsized_clip("webm-vp9", seconds=1)[:300])
    with pytest.raises(InvalidRequest) as err:
        video.probe(str(damaged))
    assert err.value.message.startswith("Invalid video file")


def test_the_encoder_thread_keeps_the_order_and_raises_its_errors():
    from pipelines.render import _Encoder

    class Recording:
        def __init__(self, fail_at: int | None = None):
            self.frames: list[int] = []
            self.fail_at = fail_at

        def write(self, frame):
            if len(self.frames) == self.fail_at:
                raise OSError("No space left on device")
            self.frames.append(int(frame[0]))

    ok = Recording()
    with _Encoder(ok, depth=2) as enc:  # type: ignore[arg-type]
        for i in range(50):
            enc.write(np.array([i]))
    assert ok.frames == list(range(50))

    failing = Recording(fail_at=3)
    with pytest.raises(OSError, match="No space left"), _Encoder(failing, depth=2) as enc:  # type: ignore[arg-type]
        for i in range(50):
            enc.write(np.array([i]))
    assert failing.frames == [0, 1, 2]


def test_sample_frames_are_the_frames_iter_frames_gives(tmp_path):
    path = tmp_path / "count.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(20):  # each frame a different flat grey
            rgb = np.full((48, 64, 3), 10 * i, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    every = [f.rgb for f in video.iter_frames(str(path))]
    picked = video.sample_frames(str(path), 5)
    assert len(picked) == 5
    expected = [every[i] for i in (0, 5, 10, 14, 19)]  # evenly spread, first and last included
    assert all(np.array_equal(a, b) for a, b in zip(picked, expected, strict=True))


def test_a_resolution_change_mid_stream_keeps_the_first_size(monkeypatch):
    """VP8/VP9/H.264 streams may change resolution mid-way; the frames come out at the first
    frame's size (the writer would otherwise refuse the frame and fail the job with a bare
    ValueError)."""
    def frames(w, h, value):
        return av.VideoFrame.from_ndarray(np.full((h, w, 3), value, np.uint8), format="rgb24")

    decoded = [(0, 0.0, frames(64, 48, 10), 0), (1, 0.1, frames(64, 48, 20), 0),
               (2, 0.2, frames(96, 64, 30), 0), (3, 0.3, frames(32, 24, 40), 0)]
    monkeypatch.setattr(video, "_iter_decoded", lambda path, max_duration_s=None: iter(decoded))
    out = list(video.iter_frames("clip.webm"))
    assert [f.rgb.shape for f in out] == [(48, 64, 3)] * 4
    assert [int(f.rgb.mean()) for f in out] == [10, 20, 30, 40]  # the pictures, rescaled


def test_frames_and_canvases_over_the_pixel_cap_are_refused_before_decoding(tmp_path):
    from pipelines.compose import Composition
    from pipelines.render import render_video

    path = tmp_path / "rec.webm"
    path.write_bytes(unsized_clip("webm-vp9", seconds=1, fps=10))  # 96x64 frames
    calls = []

    def submit(rgb):
        calls.append(1)
        return lambda: np.full(rgb.shape[:2], 255, np.uint8)

    with pytest.raises(InvalidRequest, match="Video frames are 96x64"):
        render_video(str(path), str(tmp_path / "a.webm"), submit, output_format="webm",
                     max_pixels=96 * 64 - 1)
    big = Composition.model_validate({"canvas": {"width": 200, "height": 100}})
    with pytest.raises(InvalidRequest, match=r"composition\.canvas are 200x100"):
        render_video(str(path), str(tmp_path / "b.webm"), submit, output_format="webm",
                     composition=big, max_pixels=96 * 64)
    assert not calls  # nothing was decoded or sent
    assert render_video(str(path), str(tmp_path / "c.webm"), submit, output_format="webm",
                        max_pixels=96 * 64).frames == 10
