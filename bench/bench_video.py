"""Benchmark the Video API end to end against a naive per-frame baseline, and profile its stages.

    .venv/bin/python bench/bench_video.py --out docs/benchmarks.md --json /tmp/bench_video.json

1. Ours: starts `serve run bench/bench_video.yaml` (u2netp only, local.yaml's light pool, jobs in
   a throw-away data dir), submits the first BGR_VIDEO_MAX_DURATION_S=4 s of the clip to
   `POST /video/submit/v1` (transparent -> webm; `bg_color=0,128,255` -> mp4) and polls
   `GET /video/result/{uuid}` until the 200 body is read: submit-to-file seconds. One warm-up
   job, then --runs of each (interleaved). The app is stopped before anything else runs.
2. Naive baseline, in this process: PyAV decode -> `rembg.remove(PIL image, session=u2netp)` per
   frame -> the project's `pipelines.video.VideoWriter` (webm from the RGBA; mp4 after
   compositing over the colour with numpy). Same weights, same encoders (audio kept too).
3. Where the time goes: an in-process profile of `pipelines.render.render_video`'s stages with a
   local `OnnxSegmenter` (2 threads): decode, model, smoothing, compositing, encode, each timed
   alone, plus the whole `render_video` call.
Not a test: nothing here runs under pytest.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import av
import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_matte import REPO, OursServer, wait_for_quiet  # noqa: E402
from bench_shotgun import machine  # noqa: E402

sys.path.insert(0, str(REPO))
from docs_section import write_section  # noqa: E402
from media import clip as default_clip  # noqa: E402

SERVE_YAML = REPO / "bench" / "bench_video.yaml"
MODEL = "u2netp"
COLOR = (0, 128, 255)
DURATION_S = 4.0
DOC_BEGIN, DOC_END = "<!-- bench_video:start -->", "<!-- bench_video:end -->"
DOC_HEAD = """## Video (issue 5)

What is measured: the first 4 s of a 1280x720 clip (`$BENCH_CLIP`; earlier runs: `cockatoo.mp4`;
default: bench/media.py's pan over a real photo) with `u2netp`
(fp32), end to end. Ours: `POST /video/submit/v1` on `bench/bench_video.yaml` (local.yaml's
light pool, u2netp only), then polling `GET /video/result/{uuid}` until the file is read
(transparent -> WebM/VP9 alpha; `bg_color=0,128,255` -> MP4/H.264), one warm-up job first. The
naive baseline runs in the benchmark process after our app is stopped: PyAV decode ->
`rembg.remove(..., session=new_session("u2netp"))` per frame -> the same `VideoWriter`
(compositing over the colour with numpy for MP4). Frames/s = output frames / seconds. The stage
table is an in-process profile of `render_video` (each stage timed alone). Target: >= 3x the
naive baseline on CPU.

```sh
.venv/bin/python bench/bench_video.py --out docs/benchmarks.md
```

"""


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def count_frames(path: str) -> int:
    with av.open(path) as c:
        return sum(1 for p in c.demux(video=0) if p.size)


# ---------------------------------------------------------------------------------------------
# ours
class VideoServer(OursServer):
    def command(self):
        cmd, env = super().command()
        env.update(BGR_MODELS_DIR=str(self.args.models_dir), BGR_DATA_DIR=str(self.workdir / "data"),
                   BGR_VIDEO_MAX_DURATION_S=str(DURATION_S), BGR_AUTH_ENABLED="false")
        return cmd, env



def one_job(client: httpx.Client, base: str, clip: bytes, color: bool, out: Path,
            timeout: float, model: str | None = MODEL) -> float:
    data = ({"model": model} if model else {}) | (
        {"bg_color": ",".join(map(str, COLOR))} if color else {})
    t0 = time.perf_counter()
    r = client.post(f"{base}/video/submit/v1", files={"video": ("clip.mp4", clip, "video/mp4")},
                    data=data)
    if r.status_code != 202:
        raise RuntimeError(f"submit: HTTP {r.status_code}: {r.text[:200]}")
    uid = r.json()["uuid"]
    while True:
        r = client.get(f"{base}/video/result/{uid}")
        if r.status_code == 200:
            elapsed = time.perf_counter() - t0
            out.write_bytes(r.content)
            return elapsed
        if r.status_code != 202:
            raise RuntimeError(f"result: HTTP {r.status_code}: {r.text[:200]}")
        if time.perf_counter() - t0 > timeout:
            raise RuntimeError(f"job {uid} not done after {timeout:.0f} s")
        time.sleep(0.05)


def run_ours(args, tmp: Path) -> dict:
    server = VideoServer(args, tmp)
    clip = args.clip.read_bytes()
    res = {"webm": [], "mp4": [], "frames": {}}
    try:
        print(f"starting serve run {args.serve_config}", flush=True)
        res["startup_s"] = server.start()
        print(f"healthy after {res['startup_s']:.1f} s", flush=True)
        with httpx.Client(timeout=args.timeout) as client:
            w = one_job(client, server.base, clip, False, tmp / "warm.webm", args.timeout)
            print(f"warm-up job {w:.1f} s", flush=True)
            for i in range(args.runs):
                for fmt, color in (("webm", False), ("mp4", True)):
                    path = tmp / f"ours-{i}.{fmt}"
                    s = one_job(client, server.base, clip, color, path, args.timeout)
                    res[fmt].append(s)
                    res["frames"][fmt] = count_frames(str(path))
                    print(f"  ours {fmt} run {i + 1}: {s:.2f} s, {res['frames'][fmt]} frames",
                          flush=True)
    except Exception as exc:
        print(f"FAILED: {exc}\n{server.tail(40)}", file=sys.stderr, flush=True)
        raise
    finally:
        print("stopping the Serve app", flush=True)
        server.stop()
    return res


# ---------------------------------------------------------------------------------------------
# naive baseline
def run_naive(args, tmp: Path) -> dict:
    home = tmp / "u2net-home"
    home.mkdir()
    (home / f"{MODEL}.onnx").symlink_to(args.models_dir / f"{MODEL}.onnx")
    os.environ["U2NET_HOME"] = str(home)
    t0 = time.perf_counter()
    from rembg import new_session, remove  # noqa: PLC0415 - slow import, after U2NET_HOME
    session = new_session(MODEL)
    print(f"rembg import + session {time.perf_counter() - t0:.1f} s (not timed)", flush=True)
    from pipelines.video import VideoWriter  # noqa: PLC0415

    src = str(args.clip)
    bg = np.empty((1, 1, 3), np.float32)
    bg[:] = COLOR

    def once(fmt: str, dst: str) -> tuple[float, int]:
        t = time.perf_counter()
        n = 0
        with av.open(src) as c:
            stream = c.streams.video[0]
            stream.thread_type = "AUTO"
            writer = VideoWriter(dst, fmt, stream.width, stream.height, stream.average_rate,
                                 audio_from=src, max_duration_s=DURATION_S)
            with writer:
                for frame in c.decode(stream):
                    if frame.time is not None and frame.time >= DURATION_S - 1e-6:
                        break
                    rgba = np.asarray(remove(frame.to_image(), session=session))
                    if fmt == "mp4":
                        a = rgba[:, :, 3:].astype(np.float32) / 255
                        out = np.clip(rgba[:, :, :3] * a + bg * (1 - a) + 0.5, 0, 255)
                        writer.write(out.astype(np.uint8))
                    else:
                        writer.write(rgba)
                    n += 1
        return time.perf_counter() - t, n

    with av.open(src) as c:  # warm-up: one frame through the model
        remove(next(c.decode(video=0)).to_image(), session=session)
    res = {"webm": [], "mp4": [], "frames": {}}
    for i in range(args.runs):
        for fmt in ("webm", "mp4"):
            path = tmp / f"naive-{i}.{fmt}"
            s, n = once(fmt, str(path))
            res[fmt].append(s)
            res["frames"][fmt] = count_frames(str(path))
            print(f"  naive {fmt} run {i + 1}: {s:.2f} s, {n} frames in, "
                  f"{res['frames'][fmt]} out", flush=True)
    return res


# ---------------------------------------------------------------------------------------------
# in-process stage profile
def run_profile(args, tmp: Path) -> dict:
    from pipelines import video
    from pipelines.catalog import load_catalog
    from pipelines.compose import Background
    from pipelines.render import _over, render_video
    from pipelines.segmenter import OnnxSegmenter
    from pipelines.temporal import MaskSmoother

    src = str(args.clip)
    seg = OnnxSegmenter(load_catalog().get(MODEL), args.models_dir / f"{MODEL}.onnx",
                        intra_op_threads=2)
    info = video.probe(src)
    w, h = info.display_size
    seg.predict_batch([np.zeros((h, w, 3), np.uint8)])  # warm-up
    st: dict[str, list[float]] = {}

    def submit(rgb: np.ndarray):  # synchronous: the mask is computed before submit returns
        m = seg.predict_batch([rgb])[0]
        return lambda: m

    def timed(name: str, fn):
        t = time.perf_counter()
        out = fn()
        st.setdefault(name, []).append(time.perf_counter() - t)
        return out

    for _ in range(args.profile_runs):
        frames = timed("decode", lambda: [f.rgb for f in video.iter_frames(src, DURATION_S)])
        masks = timed("model", lambda: [seg.predict_batch([f])[0] for f in frames])

        def smooth():
            sm = MaskSmoother()
            return [sm(f, m) for f, m in zip(frames, masks)]

        masks = timed("smoothing", smooth)
        bg = np.empty((h, w, 3), np.uint8)
        bg[:] = COLOR
        rgbas = timed("composite (webm: RGBA)",
                      lambda: [np.dstack([f, m]) for f, m in zip(frames, masks)])
        comps = timed("composite (mp4: over colour)",
                      lambda: [_over(r[:, :, :3], r[:, :, 3], bg) for r in rgbas])
        for fmt, outs in (("webm", rgbas), ("mp4", comps)):
            def encode():
                with video.VideoWriter(str(tmp / f"enc.{fmt}"), fmt, w, h, info.fps,
                                       audio_from=src, max_duration_s=DURATION_S) as wr:
                    for o in outs:
                        wr.write(o)
            timed(f"encode ({fmt})", encode)
        rgbas = comps = outs = None  # free the frames before the whole-pipeline runs
        for fmt, bgd in (("webm", None), ("mp4", Background(type="color",
                                                            color=",".join(map(str, COLOR))))):
            timed(f"render_video total ({fmt})", lambda: render_video(
                src, str(tmp / f"rv.{fmt}"), submit,
                output_format=fmt, background=bgd, max_duration_s=DURATION_S,
                smoother=MaskSmoother()))
    return {"frames": len(frames), "fps": float(info.fps), "width": w, "height": h,
            "stages_s": st}


# ---------------------------------------------------------------------------------------------
def report(ours: dict, naive: dict, prof: dict) -> tuple[str, list[dict]]:
    rows = []
    lines = ["| pipeline | output | median s | frames | fps | vs naive |", "|---|---|---|---|---|---|"]
    for fmt, label in (("webm", "WebM (transparent)"), ("mp4", "MP4 (colour 0,128,255)")):
        base = median(naive[fmt])
        for name, res in (("naive (rembg per frame)", naive), ("ours (Video API)", ours)):
            s, n = median(res[fmt]), res["frames"].get(fmt, 0)
            rows.append({"pipeline": name, "output": fmt, "median_s": s, "frames": n,
                         "fps": n / s, "ratio": base / s, "runs_s": res[fmt]})
            lines.append(f"| {name} | {label} | {s:.2f} | {n} | {n / s:.1f} | {base / s:.2f}x |")
    n = prof["frames"]
    lines += ["", f"In-process profile of `render_video` ({n} frames, u2netp with 2 intra-op "
              f"threads, each stage timed alone, median of {len(prof['stages_s']['model'])} run(s)):", "",
              "| stage | ms / frame | share of webm | share of mp4 |", "|---|---|---|---|"]
    med = {k: median(v) * 1000 / n for k, v in prof["stages_s"].items()}
    common = ("decode", "model", "smoothing")
    tot = {"webm": sum(med[k] for k in common) + med["composite (webm: RGBA)"] +
           med["encode (webm)"],
           "mp4": sum(med[k] for k in common) + med["composite (webm: RGBA)"] +
           med["composite (mp4: over colour)"] + med["encode (mp4)"]}
    for k, v in med.items():
        if k.startswith("render_video"):
            continue
        in_webm = k in common or k in ("composite (webm: RGBA)", "encode (webm)")
        in_mp4 = k != "encode (webm)"
        lines.append(f"| {k} | {v:.1f} | {100 * v / tot['webm']:.0f}% |"
                     if in_webm else f"| {k} | {v:.1f} | — |")
        lines[-1] += f" {100 * v / tot['mp4']:.0f}% |" if in_mp4 else " — |"
    for fmt in ("webm", "mp4"):
        v = med[f"render_video total ({fmt})"]
        lines.append(f"| sum of stages ({fmt}) | {tot[fmt]:.1f} | | |")
        lines.append(f"| `render_video` in-process, whole ({fmt}) | {v:.1f} "
                     f"({1000 / v:.1f} fps) | | |")
    return "\n".join(lines), rows


def write_doc(path: Path, section: str) -> None:
    write_section(path, DOC_BEGIN, DOC_END, DOC_HEAD, section)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3, help="timed runs per pipeline and output (3)")
    p.add_argument("--profile-runs", type=int, default=1, help="runs of the stage profile (1)")
    p.add_argument("--clip", type=Path, default=None,
                   help="default: $BENCH_CLIP, else a 1280x720 pan over a real photo "
                   "(bench/media.py)")
    p.add_argument("--models-dir", type=Path, default=Path("~/.cache/bgremove/models"))
    p.add_argument("--out", type=Path, help="markdown file whose bench_video section is rewritten")
    p.add_argument("--json", type=Path, help="also dump raw figures as JSON here")
    p.add_argument("--serve-config", type=Path, default=SERVE_YAML)
    p.add_argument("--timeout", type=float, default=600.0, help="per-job timeout, s")
    p.add_argument("--startup-timeout", type=float, default=300.0)
    p.add_argument("--allow-running-ray", action="store_true")
    p.add_argument("--wait-quiet", type=float, default=60.0, metavar="S")
    args = p.parse_args(argv)
    args.clip = args.clip or default_clip()
    if args.runs < 1:
        p.error("--runs must be positive")
    args.models_dir = args.models_dir.expanduser().resolve()
    args.clip = args.clip.resolve()
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    command = " ".join([".venv/bin/python bench/bench_video.py",
                        *(sys.argv[1:] if argv is None else argv)])
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if not (args.models_dir / f"{MODEL}.onnx").is_file():
        print(f"missing {args.models_dir / MODEL}.onnx: run `bgremove models pull {MODEL}`",
              file=sys.stderr)
        return 1
    if not wait_for_quiet(args):
        return 1
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-video-") as t:
        tmp = Path(t)
        try:
            ours = run_ours(args, tmp)
        except Exception:  # noqa: BLE001 - already reported
            return 1
        naive = run_naive(args, tmp)
        prof = run_profile(args, tmp)
    body, rows = report(ours, naive, prof)
    now = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    ratios = {r["output"]: r["ratio"] for r in rows if r["pipeline"].startswith("ours")}
    met = "; ".join(f"{f} {ratios[f]:.2f}x ({'met' if ratios[f] >= 3 else 'NOT met'})"
                    for f in ("webm", "mp4"))
    facts = (f"- {now}; {machine()}; load average {load:.2f} at the start.\n"
             f"- Clip `{args.clip.name}` {prof['width']}x{prof['height']} at "
             f"{prof['fps']:g} fps, first {DURATION_S:g} s = {prof['frames']} frames; model "
             f"{MODEL} (fp32); {args.runs} timed runs each (median), after one warm-up.\n"
             f"- Ours: client time from submit to the full 200 body (polling every 50 ms); "
             f"server start-up {ours['startup_s']:.0f} s not counted. Naive: in this process "
             "after the app was stopped; rembg import and session creation not counted.\n"
             f"- Target >= 3x the naive baseline: {met}.")
    section = "\n".join([DOC_BEGIN, "<!-- Generated by bench/bench_video.py; everything "
                         "between these markers is rewritten on each run. -->", "", facts, "",
                         "```sh", command, "```", "", body, "", DOC_END])
    print("\n" + facts + "\n\n" + body)
    if args.json:
        args.json.write_text(json.dumps({"date": now, "machine": machine(), "load": load,
                                         "rows": rows, "ours": ours, "naive": naive,
                                         "profile": prof}, indent=2, default=str))
    if args.out:
        write_doc(args.out, section)
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
