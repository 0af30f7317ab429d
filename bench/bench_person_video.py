"""Person video at person-model speed (issue 18, item 4): a clip of a person sent to the Video
API without a model (`default_model: auto`) against a naive per-frame loop with rembg's u2netp
and a naive per-frame loop over the person model auto chose.

    .venv/bin/python bench/bench_person_video.py --out docs/benchmarks.md

Clip: bench/media.py's 1280x720 pan over the astronaut photo with her head in frame (a
person, face to the camera), 4 s (80 frames), transparent WebM out. Ours:
`bench/bench_video_auto.yaml` (u2netp and the two MediaPipe person models, `default_model:
auto`), submit without `model`, poll until the file is read, one warm-up job first; `X-Model`
says which model ran. Naive u2netp: bench_video.py's loop (PyAV decode -> `rembg.remove` per
frame -> `VideoWriter`). Naive person loop: the same with `OnnxSegmenter(<that model>, 2
threads).predict` and the RGBA written as it is. The loops run in
this process after the app is stopped. Not a test: nothing here runs under pytest.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
import time
from pathlib import Path

import av
import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_video  # noqa: E402
from bench_video import REPO, VideoServer, count_frames, median, run_naive  # noqa: E402

from docs_section import write_section  # noqa: E402
from media import clip as make_clip  # noqa: E402

DOC_BEGIN, DOC_END = "<!-- bench_person_video:start -->", "<!-- bench_person_video:end -->"
DOC_HEAD = """## Person video with `model=auto` (issue 18)

A person clip sent to `/video/submit/v1` without a model runs on the person model auto picks
(decided once from 5 sampled frames), against naive per-frame loops (`bench/bench_person_video.py`;
the clip is bench/media.py's 1280x720 pan over the astronaut photo with her head in frame, 4 s,
transparent WebM):

"""


def one_job(client: httpx.Client, base: str, clip: bytes, out: Path,
            timeout: float) -> tuple[float, str]:
    t0 = time.perf_counter()
    r = client.post(f"{base}/video/submit/v1", files={"video": ("clip.mp4", clip, "video/mp4")})
    if r.status_code != 202:
        raise RuntimeError(f"submit: HTTP {r.status_code}: {r.text[:200]}")
    uid = r.json()["uuid"]
    while True:
        r = client.get(f"{base}/video/result/{uid}")
        if r.status_code == 200:
            elapsed = time.perf_counter() - t0
            out.write_bytes(r.content)
            return elapsed, r.headers.get("x-model", "?")
        if r.status_code != 202:
            raise RuntimeError(f"result: HTTP {r.status_code}: {r.text[:200]}")
        if time.perf_counter() - t0 > timeout:
            raise RuntimeError(f"job {uid} not done after {timeout:.0f} s")
        time.sleep(0.05)


def run_ours(args, tmp: Path) -> dict:
    server = VideoServer(args, tmp)
    clip = args.clip.read_bytes()
    res: dict = {"webm": [], "frames": 0, "model": "?"}
    try:
        res["startup_s"] = server.start()
        with httpx.Client(timeout=args.timeout) as client:
            one_job(client, server.base, clip, tmp / "warm.webm", args.timeout)
            for i in range(args.runs):
                path = tmp / f"ours-{i}.webm"
                s, res["model"] = one_job(client, server.base, clip, path, args.timeout)
                res["webm"].append(s)
                res["frames"] = count_frames(str(path))
                print(f"  ours run {i + 1}: {s:.2f} s on {res['model']}", flush=True)
    finally:
        server.stop()
    return res


def run_person_loop(args, model_id: str, tmp: Path) -> dict:
    from pipelines.catalog import load_catalog
    from pipelines.segmenter import OnnxSegmenter
    from pipelines.video import VideoWriter

    spec = load_catalog().get(model_id)
    seg = OnnxSegmenter(spec, args.models_dir / spec.weights.file, intra_op_threads=2)
    src = str(args.clip)
    res: dict = {"webm": [], "frames": 0}
    for i in range(args.runs):
        t = time.perf_counter()
        with av.open(src) as c:
            stream = c.streams.video[0]
            stream.thread_type = "AUTO"
            with VideoWriter(str(tmp / f"person-{i}.webm"), "webm", stream.width, stream.height,
                             stream.average_rate, audio_from=src,
                             max_duration_s=bench_video.DURATION_S) as writer:
                for frame in c.decode(stream):
                    if frame.time is not None and frame.time >= bench_video.DURATION_S - 1e-6:
                        break
                    rgb = frame.to_ndarray(format="rgb24")
                    writer.write(np.dstack([rgb, seg.predict(rgb)]))
        res["webm"].append(time.perf_counter() - t)
        res["frames"] = count_frames(str(tmp / f"person-{i}.webm"))
        print(f"  naive {model_id} run {i + 1}: {res['webm'][-1]:.2f} s", flush=True)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path)
    ap.add_argument("--runs", type=int, default=2)
    own, rest = ap.parse_known_args()
    clip = make_clip(head_in_frame=True)
    args = bench_video.parse_args(["--serve-config", str(REPO / "bench" / "bench_video_auto.yaml"),
                                   "--runs", str(own.runs), "--clip", str(clip), *rest])
    with tempfile.TemporaryDirectory(prefix="bench-person-video-") as t:
        tmp = Path(t)
        ours = run_ours(args, tmp)
        naive = run_naive(args, tmp)
        person = run_person_loop(args, ours["model"], tmp)
    base_u2 = median(naive["webm"])
    base_person = median(person["webm"])
    rows = [("naive loop, rembg u2netp", "u2netp", naive["webm"], naive["frames"]["webm"]),
            (f"naive loop, {ours['model']}", ours["model"], person["webm"], person["frames"]),
            ("ours: /video/submit/v1, no model (auto)", ours["model"], ours["webm"],
             ours["frames"])]
    lines = [f"_{dt.date.today()}, {os.cpu_count()} cores; median of {args.runs} runs; "
             "`bench/bench_person_video.py`._", "",
             "| pipeline | model | median s | frames | fps | vs naive u2netp | vs naive same "
             "model |", "|---|---|---|---|---|---|---|"]
    for name, model, runs, frames in rows:
        s = median(runs)
        lines.append(f"| {name} | {model} | {s:.2f} | {frames} | {frames / s:.1f} | "
                     f"{base_u2 / s:.1f}x | {base_person / s:.2f}x |")
    table = "\n".join(lines)
    print(table)
    if own.out:
        write_section(own.out, DOC_BEGIN, DOC_END, DOC_HEAD, f"{DOC_BEGIN}\n{table}\n{DOC_END}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
