"""Streaming video I/O for the background-removal pipeline (PyAV, bundled FFmpeg).

- `probe` reads a clip's header and decodes its first frame, so corrupt or non-video files are
  refused up front with the decoder's own reason (as `InvalidRequest`).
- `iter_frames` yields one upright RGB frame at a time (never the whole clip), stopping at a
  duration limit (spec 000 trims videos to their first 4 s).
- `VideoWriter` encodes frames as they are written: WebM = VP9 with alpha (yuva420p), MP4 =
  H.264 (yuv420p, odd sizes padded by one edge pixel), MOV = ProRes 4444 with alpha. It can copy
  the input's audio (transcoded, trimmed to the same limit); audio problems never fail the video.
- `read_alpha_webm` decodes VP9/VP8 WebM *with* its alpha plane (FFmpeg's native VP9 decoder drops
  alpha; the libvpx decoders keep it).
- Duration and trim-warning strings exactly as spec 000 shows them.

Timestamps: frames are written with pts = frame index in a codec time base of 1/fps, so with a
`Fraction` rate (e.g. 30000/1001) every timestamp is exact.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, BinaryIO

import av
import cv2
import numpy as np

from pipelines.errors import InvalidRequest
from pipelines.media_types import is_video_type, sniff_file

NOT_A_VIDEO_MESSAGE = "File must be a video"

# Decoders that keep VP8/VP9 alpha (the side-data alpha plane WebM uses).
_LIBVPX_DECODERS = {"vp9": "libvpx-vp9", "vp8": "libvpx"}

# Fallback when a stream states no usable frame rate.
_DEFAULT_FPS = Fraction(25)

FORMATS = ("webm", "mp4", "mov")


# ---------------------------------------------------------------------------------------------
# Duration strings (spec 000)


def format_duration(seconds: float) -> str:
    """`3.5` -> `"3.50s"`."""
    return f"{seconds:.2f}s"


def format_limit(limit_s: float) -> str:
    """A limit as spec 000 prints it: without decimals when integral (`4` -> `"4s"`)."""
    if float(limit_s).is_integer():
        return f"{int(limit_s)}s"
    return format_duration(limit_s)


def _limit_number(limit_s: float) -> str:
    return str(int(limit_s)) if float(limit_s).is_integer() else f"{limit_s:.2f}"


def is_trimmed(original_s: float, limit_s: float | None) -> bool:
    return limit_s is not None and original_s > limit_s


def processed_duration(original_s: float, limit_s: float | None) -> float:
    return original_s if limit_s is None else min(original_s, limit_s)


def submit_trim_warning(original_s: float, limit_s: float) -> str:
    """`"Video duration (5.20s) exceeds 4s limit. Only the first 4s will be processed."`"""
    limit = format_limit(limit_s)
    return (
        f"Video duration ({format_duration(original_s)}) exceeds {limit} limit. "
        f"Only the first {limit} will be processed."
    )


def result_trim_warning(original_s: float, limit_s: float) -> str:
    """`"Video was trimmed from 5.20s to 4.00s"` (the result body's `warning`)."""
    return (
        f"Video was trimmed from {format_duration(original_s)} "
        f"to {format_duration(processed_duration(original_s, limit_s))}"
    )


def header_trim_warning(original_s: float, limit_s: float) -> str:
    """`"Original video (5.20s) was trimmed to 4 seconds"` (the `X-Video-Warning` header)."""
    return (
        f"Original video ({format_duration(original_s)}) was trimmed to "
        f"{_limit_number(limit_s)} seconds"
    )


# ---------------------------------------------------------------------------------------------
# Reading


@dataclass(frozen=True)
class VideoInfo:
    width: int  # as stored (before rotation)
    height: int
    fps: Fraction
    duration_s: float  # 0.0 when nothing in the file says (`duration_known` is then False)
    frame_count: int  # the container's count, else counted packets, else duration x fps
    has_audio: bool
    codec: str
    rotation: int  # counter-clockwise degrees to turn stored frames upright: 0, 90, 180, 270
    duration_known: bool = True

    @property
    def display_size(self) -> tuple[int, int]:
        """(width, height) of the upright frames `iter_frames` yields."""
        if self.rotation in (90, 270):
            return self.height, self.width
        return self.width, self.height


@dataclass(frozen=True)
class Frame:
    index: int
    pts_s: float  # seconds from the stream's start
    rgb: np.ndarray  # uint8 H x W x 3, upright


def _reason(exc: Exception) -> str:
    """The decoder's reason without the server-side path FFmpeg errors append."""
    if isinstance(exc, av.FFmpegError) and exc.strerror:
        return str(exc.strerror)
    return str(exc) or type(exc).__name__


def _invalid(exc: Exception) -> InvalidRequest:
    return InvalidRequest(f"Invalid video file: {_reason(exc)}")


def _open_input(source: str | BinaryIO):
    """A container for a path or an open seekable binary file (read from its start)."""
    if not isinstance(source, str):
        source.seek(0)
    try:
        return av.open(source if not isinstance(source, str) else str(source), mode="r")
    except av.FFmpegError as exc:
        raise _invalid(exc) from exc
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise _invalid(exc) from exc


def _normalise_rotation(degrees: float) -> int:
    return round(degrees / 90.0) * 90 % 360


def _metadata_rotation(stream) -> int:
    """Old-style `rotate` tag (clockwise degrees); recent FFmpeg turns it into a display matrix."""
    value = (stream.metadata or {}).get("rotate")
    try:
        return _normalise_rotation(-float(value)) if value is not None else 0
    except ValueError:
        return 0


def _frame_rotation(frame) -> int:
    try:
        return _normalise_rotation(frame.rotation or 0)
    except (AttributeError, ValueError, TypeError):
        return 0


def _stream_fps(stream) -> Fraction:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate and rate > 0:
            rate = Fraction(rate)
            if rate <= 1000:  # base_rate of WebM is often the 1/1000 time base
                return rate
    return _DEFAULT_FPS


def _stream_duration(container, stream) -> float:
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / av.time_base
    return 0.0


def _scan_packets(path: str | BinaryIO, fps: Fraction) -> tuple[float, int]:
    """(seconds, frames) of the first video stream from its packets' timestamps, without
    decoding: for files whose header states no duration (a browser's MediaRecorder WebM, live
    streams). Demuxing reads the file once; no frame is decoded. A packet without a duration
    lasts one frame interval. (0.0, n) when the packets carry no timestamps."""
    container = _open_input(path)
    try:
        stream = container.streams.video[0]
        time_base = stream.time_base or Fraction(1, 1000)
        interval = 1 / (fps * time_base)  # one frame, in time-base units
        first = last = None
        frames = 0
        try:
            for packet in container.demux(stream):
                if packet.size == 0:  # the demuxer's final empty packet
                    continue
                frames += 1
                if packet.pts is None:
                    continue
                end = packet.pts + (packet.duration or interval)
                first = packet.pts if first is None else min(first, packet.pts)
                last = end if last is None else max(last, end)
        except av.FFmpegError:
            pass  # a damaged tail: what was read so far is the best answer
        if first is None or last is None:
            return 0.0, frames
        return float((last - first) * time_base), frames
    finally:
        container.close()


def _start_time(stream) -> Fraction:
    if stream.start_time is not None and stream.time_base:
        return stream.start_time * stream.time_base
    return Fraction(0)


def probe(path: str | BinaryIO) -> VideoInfo:
    """Header facts plus one decoded frame, of a file by path or an open seekable binary file
    (an upload still in its spool); `InvalidRequest` for anything not a usable video:
    "File must be a video" when the first bytes name no video container (text, images,
    documents), the decoder's reason when a video container is damaged."""
    if not is_video_type(sniff_file(path)):
        raise InvalidRequest(NOT_A_VIDEO_MESSAGE)
    container = _open_input(path)
    try:
        if not container.streams.video:
            raise InvalidRequest(NOT_A_VIDEO_MESSAGE)
        stream = container.streams.video[0]
        codec = stream.codec_context.name
        try:
            first = next(iter(container.decode(stream)), None)
        except av.FFmpegError as exc:
            raise _invalid(exc) from exc
        if first is None:
            raise InvalidRequest("Invalid video file: no decodable frames")
        width = stream.codec_context.width or first.width
        height = stream.codec_context.height or first.height
        if not width or not height:
            raise InvalidRequest("Invalid video file: no frame size")
        fps = _stream_fps(stream)
        duration = _stream_duration(container, stream)
        frames = stream.frames
        if duration <= 0:  # the header states no duration: read it from the packets
            duration, counted = _scan_packets(path, fps)
            frames = frames or counted
        frames = frames or round(duration * fps)
        rotation = _frame_rotation(first) or _metadata_rotation(stream)
        return VideoInfo(
            width=int(width),
            height=int(height),
            fps=fps,
            duration_s=duration,
            frame_count=int(frames),
            has_audio=bool(container.streams.audio),
            codec=codec,
            rotation=rotation,
            duration_known=duration > 0,
        )
    finally:
        container.close()


def _upright(rgb: np.ndarray, rotation: int) -> np.ndarray:
    if rotation == 0:
        return rgb
    return np.ascontiguousarray(np.rot90(rgb, k=rotation // 90))


def _libvpx_context(codec_name: str):
    name = _LIBVPX_DECODERS.get(codec_name)
    if name is None:
        return None
    try:
        return av.CodecContext.create(name, "r")
    except (av.FFmpegError, ValueError):
        return None


def _decoded_frames(container, stream, use_libvpx: bool) -> Iterator:
    """Video frames in presentation order; the libvpx decoders for VP8/VP9 when asked."""
    ctx = _libvpx_context(stream.codec_context.name) if use_libvpx else None
    if ctx is None:
        yield from container.decode(stream)
        return
    for packet in container.demux(stream):
        if packet.size == 0:  # the demuxer's final empty packet
            continue
        for frame in ctx.decode(packet):
            if frame.pts is None:
                frame.pts = packet.pts
            yield frame
    yield from ctx.decode(None)


def _iter_decoded(path: str, max_duration_s: float | None) -> Iterator[tuple[int, float, Any, int]]:
    """(index, pts in seconds, the decoded av frame, its rotation) one at a time, stopping
    before `max_duration_s`; nothing converted yet. Decoder errors become `InvalidRequest`."""
    info = probe(path)
    container = _open_input(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        time_base = stream.time_base or Fraction(1, 1000)
        start = _start_time(stream)
        index = 0
        try:
            for frame in _decoded_frames(container, stream, use_libvpx=True):
                if frame.pts is not None:
                    pts_s = float(frame.pts * time_base - start)
                else:
                    pts_s = float(index / info.fps)
                if max_duration_s is not None and pts_s >= max_duration_s - 1e-6:
                    break
                yield index, pts_s, frame, _frame_rotation(frame) or info.rotation
                index += 1
        except av.FFmpegError as exc:
            raise _invalid(exc) from exc
    finally:
        container.close()


def _rgb(frame, rotation: int) -> np.ndarray:
    return _upright(frame.to_ndarray(format="rgb24"), rotation)


def iter_frames(path: str, max_duration_s: float | None = None) -> Iterator[Frame]:
    """Upright RGB frames one at a time, stopping before `max_duration_s` (seconds of stream
    time, from the first frame). Decoder errors mid-stream become `InvalidRequest`. A stream
    whose resolution changes mid-way (allowed in VP8/VP9/H.264) comes out at its first frame's
    size throughout, as ffmpeg's own scaler would give it."""
    size: tuple[int, int] | None = None
    for index, pts_s, frame, rotation in _iter_decoded(path, max_duration_s):
        rgb = _rgb(frame, rotation)
        if size is None:
            size = (rgb.shape[1], rgb.shape[0])
        elif (rgb.shape[1], rgb.shape[0]) != size:
            rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        yield Frame(index=index, pts_s=pts_s, rgb=rgb)


def sample_frames(path: str, count: int, max_duration_s: float | None = None) -> list[np.ndarray]:
    """`count` upright RGB frames spread evenly over the part of the clip that will be
    processed (frames are decoded up to the last one wanted; only those are converted)."""
    info = probe(path)
    seconds = processed_duration(info.duration_s, max_duration_s) if info.duration_known else 0
    total = max(1, duration_ceiling_frames(seconds, info.fps)) if seconds else count
    wanted = {round(i * (total - 1) / max(count - 1, 1)) for i in range(count)}
    picked = []
    for index, _, frame, rotation in _iter_decoded(path, max_duration_s):
        if index in wanted:
            picked.append(_rgb(frame, rotation))
            if len(picked) == len(wanted):
                break
    return picked


def read_alpha_webm(path: str) -> Iterator[np.ndarray]:
    """RGBA frames (uint8 H x W x 4) of a VP9/VP8 WebM, decoded with libvpx so alpha survives."""
    container = _open_input(path)
    try:
        stream = container.streams.video[0]
        for frame in _decoded_frames(container, stream, use_libvpx=True):
            yield frame.to_ndarray(format="rgba")
    finally:
        container.close()


# ---------------------------------------------------------------------------------------------
# Writing

_VIDEO_SETTINGS = {
    # codec, pix_fmt, codec options, keeps alpha
    "webm": (
        "libvpx-vp9",
        "yuva420p",
        # auto-alt-ref must be off for libvpx to encode the alpha plane.
        {"deadline": "realtime", "cpu-used": "8", "row-mt": "1", "auto-alt-ref": "0",
         "crf": "30", "b": "0"},
        True,
    ),
    "mp4": ("libx264", "yuv420p", {"preset": "veryfast", "crf": "20"}, False),
    "mov": ("prores_ks", "yuva444p10le", {"profile": "4444"}, True),
}

# Audio: codec, sample format, rate. Opus only takes 48 kHz (among a few lower rates).
_AUDIO_SETTINGS = {
    "webm": ("libopus", "s16", 48000),
    "mp4": ("aac", "fltp", 48000),
    "mov": ("aac", "fltp", 48000),
}

_CONTAINER_OPTIONS = {"mp4": {"movflags": "+faststart"}}


class VideoWriter:
    """Encode frames as they arrive (memory stays bounded).

    `fmt` is "webm" (VP9 + alpha), "mp4" (H.264, no alpha) or "mov" (ProRes 4444 + alpha).
    `write` takes uint8 RGBA (H x W x 4) or RGB (H x W x 3) frames of exactly `height` x `width`;
    RGB frames are opaque in the alpha formats, and the MP4 drops alpha (composite first).
    H.264 4:2:0 needs even sizes: for MP4 an odd width/height is padded by repeating the last
    column/row, so the output is one pixel larger (`encoded_size`).

    With `audio_from`, the first audio stream of that file is transcoded (Opus for WebM, AAC for
    MP4/MOV) and trimmed to `max_duration_s`. Any audio failure leaves a video-only file and the
    reason in `audio_error`; `has_audio` tells whether audio was written.
    """

    def __init__(
        self,
        path: str,
        fmt: str,
        width: int,
        height: int,
        fps: Fraction | float | int,
        audio_from: str | None = None,
        max_duration_s: float | None = None,
    ) -> None:
        if fmt not in _VIDEO_SETTINGS:
            raise ValueError(f"unknown video format {fmt!r}; expected one of {FORMATS}")
        if width <= 0 or height <= 0:
            raise ValueError("width and height must be positive")
        self.path = str(path)
        self.fmt = fmt
        self.width = int(width)
        self.height = int(height)
        self.fps = Fraction(fps).limit_denominator(1_000_000)
        if self.fps <= 0:
            raise ValueError("fps must be positive")
        self.audio_from = audio_from
        self.max_duration_s = max_duration_s
        self.audio_error: str | None = None
        self.has_audio = False
        self.frames_written = 0
        pad = fmt == "mp4"
        self.encoded_size = (
            self.width + (self.width % 2 if pad else 0),
            self.height + (self.height % 2 if pad else 0),
        )
        self._container: Any = None  # av's OutputContainer once open
        self._stream: Any = None

    # -- context manager ---------------------------------------------------------------------

    def __enter__(self) -> VideoWriter:
        self.open()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(flush=exc_type is None)

    def open(self) -> None:
        if self._container is not None:
            return
        if self.audio_from:
            try:
                self._open(with_audio=True)
                return
            except Exception as exc:  # noqa: BLE001 - audio must never fail the video
                self.audio_error = _reason(exc)
                self._discard()
        self._open(with_audio=False)

    def _open(self, with_audio: bool) -> None:
        self._container = av.open(
            self.path, mode="w", format=self.fmt, options=_CONTAINER_OPTIONS.get(self.fmt, {})
        )
        codec, pix_fmt, options, _ = _VIDEO_SETTINGS[self.fmt]
        stream = self._container.add_stream(codec, rate=self.fps)
        stream.width, stream.height = self.encoded_size
        stream.pix_fmt = pix_fmt
        stream.codec_context.time_base = 1 / self.fps
        stream.options = dict(options)
        if self.fmt == "mov":
            stream.codec_context.codec_tag = "ap4h"
        self._stream = stream
        if with_audio:
            packets = self._encode_audio()
            if packets:
                for packet in packets:
                    self._container.mux(packet)
                self.has_audio = True

    def _encode_audio(self) -> list:
        """Transcode (and trim) the source's audio into packets for this container's new audio
        stream. Everything is encoded before anything is muxed, so a failure can be undone by
        reopening the output without audio."""
        source = av.open(str(self.audio_from), mode="r")
        try:
            if not source.streams.audio:
                return []
            in_stream = source.streams.audio[0]
            codec, sample_fmt, rate = _AUDIO_SETTINGS[self.fmt]
            channels = in_stream.codec_context.channels or 2
            layout = "mono" if channels == 1 else "stereo"
            out = self._container.add_stream(codec, rate=rate)
            out.layout = layout
            out.format = sample_fmt
            ctx = out.codec_context
            ctx.time_base = Fraction(1, rate)
            ctx.open()
            frame_size = ctx.frame_size or 1024
            resampler = av.AudioResampler(
                format=sample_fmt, layout=layout, rate=rate, frame_size=frame_size
            )
            limit = (
                None if self.max_duration_s is None else round(self.max_duration_s * rate)
            )
            packets: list = []
            written = 0

            def emit(frames) -> bool:
                nonlocal written
                for frame in frames:
                    n = frame.samples
                    if limit is not None and written + n > limit:
                        n = limit - written
                        if n <= 0:
                            return False
                        frame = _cut_audio(frame, n, layout, rate)
                    frame.pts = written
                    frame.time_base = Fraction(1, rate)
                    packets.extend(out.encode(frame))
                    written += n
                    if limit is not None and written >= limit:
                        return False
                return True

            going = True
            for frame in source.decode(in_stream):
                frame.pts = None  # we count samples; source timestamps may not start at 0
                if not emit(resampler.resample(frame)):
                    going = False
                    break
            if going:
                emit(resampler.resample(None))
            packets.extend(out.encode(None))
            return packets
        finally:
            source.close()

    # -- frames ------------------------------------------------------------------------------

    def write(self, frame: np.ndarray) -> None:
        if self._container is None:
            self.open()
        arr = np.asarray(frame)
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] not in (3, 4):
            raise ValueError("frames must be uint8 H x W x 3 (RGB) or H x W x 4 (RGBA)")
        if arr.shape[:2] != (self.height, self.width):
            raise ValueError(
                f"frame is {arr.shape[1]}x{arr.shape[0]}, writer expects {self.width}x{self.height}"
            )
        keeps_alpha = _VIDEO_SETTINGS[self.fmt][3]
        if keeps_alpha:
            if arr.shape[2] == 3:
                alpha = np.full((*arr.shape[:2], 1), 255, dtype=np.uint8)
                arr = np.concatenate([arr, alpha], axis=2)
            layout = "rgba"
        else:
            arr = arr[:, :, :3]
            layout = "rgb24"
        pad_w = self.encoded_size[0] - self.width
        pad_h = self.encoded_size[1] - self.height
        if pad_w or pad_h:
            arr = np.pad(arr, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
        video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format=layout)
        video_frame.pts = self.frames_written
        video_frame.time_base = 1 / self.fps
        for packet in self._stream.encode(video_frame):
            self._container.mux(packet)
        self.frames_written += 1

    def close(self, flush: bool = True) -> None:
        if self._container is None:
            return
        try:
            if flush:
                for packet in self._stream.encode(None):
                    self._container.mux(packet)
        finally:
            self._container.close()
            self._container = None
            self._stream = None

    def _discard(self) -> None:
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # noqa: BLE001 - the file is reopened (truncated) next
                pass
            self._container = None
            self._stream = None


def _cut_audio(frame, samples: int, layout: str, rate: int):
    """The first `samples` samples of an audio frame."""
    arr = frame.to_ndarray()
    arr = arr[:, :samples] if frame.format.is_planar else arr[:, :samples * len(frame.layout.channels)]
    cut = av.AudioFrame.from_ndarray(np.ascontiguousarray(arr), format=frame.format.name,
                                     layout=layout)
    cut.sample_rate = rate
    return cut


def duration_ceiling_frames(duration_s: float, fps: Fraction) -> int:
    """Frames a clip of `duration_s` seconds holds at `fps` (for progress totals)."""
    return max(0, math.ceil(duration_s * fps - 1e-9))
