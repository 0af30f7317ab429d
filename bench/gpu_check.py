"""GPU figures in one device call (issue 18, item 5), written to --out as JSON and markdown:

1. the pro model (IS-Net, fp16 on CUDA) with onnxruntime alone: p50 per batch and images/s at
   batch 1, 8 and 32;
2. the same model behind a Serve deployment (`SegmentationModel`, `@serve.batch` up to 32, 5 ms
   wait) loaded by 64 concurrent handle calls: images/s, against (1);
3. a 4 s 1080p30 clip end to end through `/video/submit/v1` (mp4 and webm) on
   `bench/gpu_check.yaml` (IS-Net in the pro pool, 2 replicas sharing the GPU, frames batched);
4. the shotgun (`/remove-background`, every model of that config) against its slowest member.

    bash bench/gpu_check.sh                  # on the device machine: $OUT gets the figures
    .venv/bin/python bench/gpu_check.py --cpu --out /tmp/gpu-cpu   # this script's CPU twin

`--cpu` runs every step on the CPU provider with u2netp, small batches and a short clip: the
script's own test where no GPU is lent (the figures mean nothing there).
Not a test: nothing here runs under pytest.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
MODELS_DIR = Path(os.environ.get("BGR_MODELS_DIR", "~/.cache/bgremove/models")).expanduser()


def photo(size: int) -> np.ndarray:
    from PIL import Image
    from skimage import data

    return np.asarray(Image.fromarray(data.astronaut()).resize((size, size)))


def step_onnxruntime(model: str, providers: list[str], batches: list[int], runs: int) -> dict:
    from pipelines.catalog import load_catalog
    from pipelines.segmenter import OnnxSegmenter, preprocess

    spec = load_catalog().get(model)
    seg = OnnxSegmenter(spec, MODELS_DIR / spec.weights.file, providers=providers)
    x = preprocess(photo(spec.preprocess.width), spec.preprocess)
    out = {"model": model, "providers": seg.providers, "precision": seg.precision, "batches": {}}
    for b in batches:
        batch = np.stack([x] * b)
        run = seg._run if seg.dynamic_batch else None
        if run is None:  # a fixed batch axis: one by one, as the replica does
            def call() -> None:
                for i in range(b):
                    seg._run(seg.session, batch[i:i + 1])
        else:
            def call() -> None:
                seg._run(seg.session, batch)
        call()
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            call()
            times.append(time.perf_counter() - t)
        p50 = statistics.median(times)
        out["batches"][b] = {"p50_ms": p50 * 1e3, "images_per_s": b / p50}
        print(f"onnxruntime batch {b}: p50 {p50 * 1e3:.1f} ms, {b / p50:.1f} images/s", flush=True)
    return out


def step_serve(model: str, providers: list[str], max_batch: int, callers: int,
               calls: int) -> dict:
    import ray
    from ray import serve

    from deployments.segmentation import SegmentationModel
    from pipelines.catalog import load_catalog
    from pipelines.segmenter import for_model

    spec = load_catalog().get(model)
    ray.init(include_dashboard=False, logging_level="ERROR")
    num_gpus = 1 if "CUDAExecutionProvider" in providers else 0
    app = serve.deployment(SegmentationModel, name=model, max_ongoing_requests=2 * callers,
                           ray_actor_options={"num_gpus": num_gpus},
                           user_config={"batch": {"max_batch_size": max_batch,
                                                  "batch_wait_timeout_s": 0.005}})
    handle = serve.run(app.bind(spec.model_dump(mode="json"), str(MODELS_DIR / spec.weights.file),
                                providers=providers), name="gpu-check", route_prefix=None)
    sent, native = for_model(photo(1024), spec)

    async def load() -> float:
        async def caller() -> None:
            for _ in range(calls):
                await handle.segment.remote(sent, native)
        t = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(callers)))
        return time.perf_counter() - t

    asyncio.run(load())  # warm-up: batches of every size compiled
    seconds = asyncio.run(load())
    described = handle.describe.remote().result()
    serve.shutdown()
    ray.shutdown()
    rate = callers * calls / seconds
    print(f"serve: {rate:.1f} images/s, largest batch {described['largest_batch']}", flush=True)
    return {"images_per_s": rate, "callers": callers, "largest_batch": described["largest_batch"],
            "providers": described["providers"], "precision": described["precision"]}


def step_app(config: Path, clip: Path, runs: int, tmp: Path) -> dict:
    """Video (mp4, webm) and shotgun timings through the HTTP app started from `config`."""
    import httpx
    from bench_video import VideoServer, one_job

    args = argparse.Namespace(serve_config=config, startup_timeout=600.0, timeout=600.0,
                              models_dir=MODELS_DIR, allow_running_ray=True, wait_quiet=0)
    server = VideoServer(args, tmp)
    result: dict = {"video_s": {}, "shotgun": {}}
    try:
        server.start()
        data = clip.read_bytes()
        with httpx.Client(timeout=600) as client:
            one_job(client, server.base, data, False, tmp / "warm.webm", 600, model=None)
            for fmt, color in (("mp4", True), ("webm", False)):
                times = [one_job(client, server.base, data, color, tmp / f"v.{fmt}", 600,
                                 model=None) for _ in range(runs)]
                result["video_s"][fmt] = statistics.median(times)
                print(f"video {fmt}: {result['video_s'][fmt]:.2f} s", flush=True)
            buf = io.BytesIO()
            from PIL import Image
            Image.fromarray(photo(1024)).save(buf, "PNG")
            body = {"image": base64.b64encode(buf.getvalue()).decode()}
            client.post(f"{server.base}/remove-background", json=body)  # warm
            walls, ratios = [], []
            for _ in range(runs):
                t = time.perf_counter()
                r = client.post(f"{server.base}/remove-background", json=body).json()
                walls.append(time.perf_counter() - t)
                slowest = max(row["processing_time_ms"] for row in r["results"])
                ratios.append(r["processing_time_ms"] / slowest)
            result["shotgun"] = {"models": [row["model_id"] for row in r["results"]],
                                 "ratio_to_slowest": statistics.median(ratios),
                                 "wall_s": statistics.median(walls)}
            print(f"shotgun: {result['shotgun']}", flush=True)
    finally:
        server.stop()
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu", action="store_true", help="the CPU twin (tests this script)")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp/gpu-check")))
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.cpu:
        model, providers, batches, max_batch, callers, calls = (
            "u2netp", ["CPUExecutionProvider"], [1, 2], 2, 4, 2)
        config, size, fps, seconds = REPO / "bench" / "gpu_check_cpu.yaml", (640, 360), 10, 1.0
    else:
        import onnxruntime as ort
        ort.preload_dlls()  # CUDA and cuDNN from the nvidia-* wheels
        model, providers, batches, max_batch, callers, calls = (
            "isnet-imgly-medium", ["CUDAExecutionProvider", "CPUExecutionProvider"],
            [1, 8, 32], 32, 64, 4)
        config, size, fps, seconds = REPO / "bench" / "gpu_check.yaml", (1920, 1080), 30, 4.0
    from media import clip
    figures = {"onnxruntime": step_onnxruntime(model, providers, batches, args.runs),
               "serve": step_serve(model, providers, max_batch, callers, calls)}
    (args.out / "gpu_check.json").write_text(json.dumps(figures, indent=2))
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as t:
        figures["app"] = step_app(config, clip(seconds, fps, size), max(1, args.runs // 2),
                                  Path(t))
    (args.out / "gpu_check.json").write_text(json.dumps(figures, indent=2))
    best = max(v["images_per_s"] for v in figures["onnxruntime"]["batches"].values())
    lines = [f"- onnxruntime alone, {model} {figures['onnxruntime']['precision']}: " + ", ".join(
        f"batch {b}: {v['images_per_s']:.1f} images/s (p50 {v['p50_ms']:.1f} ms)"
        for b, v in figures["onnxruntime"]["batches"].items()),
        f"- through Serve (batch <= {max_batch}, {callers} callers): "
        f"{figures['serve']['images_per_s']:.1f} images/s "
        f"({figures['serve']['images_per_s'] / best:.2f}x the best onnxruntime rate)",
        f"- {seconds:g} s {size[1]}p{fps} clip through /video/submit/v1: mp4 "
        f"{figures['app']['video_s']['mp4']:.2f} s, webm {figures['app']['video_s']['webm']:.2f} s",
        f"- shotgun ({', '.join(figures['app']['shotgun']['models'])}): "
        f"{figures['app']['shotgun']['ratio_to_slowest']:.2f}x its slowest member"]
    (args.out / "gpu_check.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
