"""Peak memory and stage times of one HD image job's pure stages (issue 4), one process per run.

    .venv/bin/python bench/bench_hd_memory.py                      # 8000x6000, both masks
    .venv/bin/python bench/bench_hd_memory.py --out docs/benchmarks.md
    .venv/bin/python bench/bench_hd_memory.py --size 4000x3000 --masks edge --repeat 3

An 8000x6000 photo-like RGB test image (the astronaut sample photo, bench/media.py, upscaled when present,
else a synthetic gradient; plus mild sensor-like noise, so the PNG is as hard to compress as a
camera photo's) is built and PNG-encoded once, in its own subprocess, and saved to a temporary
file. Each measurement is then a fresh Python process that runs what an HD worker runs after the
upload: read the bytes, `pipelines.images.decode_image(data, max_pixels=None)`, a mask,
`pipelines.effects.cutout`, `pipelines.images.encode_png`, write the PNG to a file. The model
runs elsewhere (its own deployment), so a synthetic soft mask stands in for its output: an
ellipse rendered at 1/8 resolution and upscaled bilinearly to full size, as a model's mask is.
`edge`: soft only at the outline (a good matting model); `soft`: nearly every pixel partially
transparent (u2net's min-max normalised masks; Blur-Fusion's worst case).
Peak RSS is the process's `ru_maxrss`, restarted before each stage (Linux
`/proc/self/clear_refs`) so each stage's own peak shows; the job's peak is the highest of them.
The baseline is the RSS after imports and reading the input bytes. The markdown table goes to
stdout, and with --out between the bench_hd_memory markers of that file (a new section is
appended when the markers are absent).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from docs_section import write_section  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from media import media_dir  # noqa: E402

MEDIA_DIR = media_dir()
DOC_BEGIN, DOC_END = "<!-- bench_hd_memory:start -->", "<!-- bench_hd_memory:end -->"
DOC_HEAD = """## HD image memory (issue 4)

Method: `bench/bench_hd_memory.py` builds an 8000x6000 (48 MP) photo-like PNG once, then runs
each measurement in a fresh Python process doing what an HD worker does after the upload:
decode (`decode_image(data, max_pixels=None)`), a mask, `effects.cutout` (Blur-Fusion edge
decontamination, in strips), `encode_png`, write the file. The model runs in its own
deployment, so a synthetic soft mask (an ellipse drawn at 1/8 size and upscaled, `edge`: soft
outline only; `soft`: almost every pixel partially transparent) stands in for it; the total
time leaves it out. Peak RSS is the process's `ru_maxrss`, restarted from the current RSS
before each stage (`/proc/self/clear_refs`) so each stage's own peak shows; the whole job's peak
is the highest of them. The baseline is the RSS after imports and reading the input bytes.

"""
MASK_STAGE = "mask (synthetic)"
STAGES = ("read", "decode", MASK_STAGE, "cutout", "encode_png", "write")


def _status_mib(field: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def rss_mib() -> float:
    """Current resident set size (Linux /proc; the peak elsewhere)."""
    return _status_mib("VmRSS") or peak_mib()


def peak_mib() -> float:
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / 1024 if sys.platform != "darwin" else kib / 2**20


def reset_peak() -> bool:
    """Restart the peak-RSS count from the current RSS (Linux: /proc/self/clear_refs 5), so
    ru_maxrss read after a stage is that stage's peak. False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# ---- child processes --------------------------------------------------------------------------

def make_input(path: Path, width: int, height: int) -> dict:
    """Write the photo-like test PNG; returns what it is made of."""
    import cv2
    import numpy as np

    from pipelines.images import encode_png

    source = MEDIA_DIR / "astronaut.png"
    if source.is_file():
        small = cv2.cvtColor(cv2.imread(str(source), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        rgb = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
        what = f"{source.name} upscaled"
    else:
        xs = np.linspace(0, 1, width, dtype=np.float32)[None, :, None]
        rgb = np.empty((height, width, 3), np.uint8)
        for y0 in range(0, height, 512):
            ys = np.linspace(y0 / height, min(height, y0 + 512) / height,
                             min(512, height - y0), dtype=np.float32)[:, None, None]
            band = 40 + 150 * xs * np.float32([1.0, 0.6, 0.3]) + 60 * ys * np.float32([0.2, 0.5, 1])
            rgb[y0:y0 + len(ys)] = np.clip(band, 0, 255).astype(np.uint8)
        what = "synthetic gradient"
    rng = np.random.default_rng(0)
    for y0 in range(0, height, 512):  # sensor-like noise, in strips to keep this process small
        rows = rgb[y0:y0 + 512]
        noise = rng.integers(-4, 5, rows.shape, dtype=np.int16)
        rows[:] = np.clip(rows.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    data = encode_png(rgb)
    path.write_bytes(data)
    return {"source": what + " + noise", "png_bytes": len(data)}


def synthetic_mask(width: int, height: int, kind: str):
    """uint8 H x W alpha: an ellipse drawn at 1/8 size and upscaled like a model's output."""
    import cv2
    import numpy as np

    sw, sh = max(1, width // 8), max(1, height // 8)
    yy, xx = np.mgrid[:sh, :sw].astype(np.float32)
    d = np.sqrt(((xx - sw * 0.5) / (sw * 0.32)) ** 2 + ((yy - sh * 0.55) / (sh * 0.4)) ** 2)
    if kind == "edge":  # opaque inside, transparent outside, ~1% of the width soft
        a = np.clip((1.0 - d) * 40.0 + 0.5, 0.0, 1.0)
    else:  # "soft": min-max normalised low-confidence mask, nearly nothing fully 0 or 255
        a = np.clip(0.5 + 0.49 * np.cos(np.minimum(d, 1.5) * 2.0), 0.004, 0.996)
    small = (a * 255 + 0.5).astype(np.uint8)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)


def run_pipeline(input_path: Path, output_path: Path, mask_kind: str) -> dict:
    from pipelines import effects
    from pipelines.images import decode_image, encode_png

    stages: list[dict] = []

    def stage(name, fn, *args, **kwargs):
        reset_peak()
        t0 = time.perf_counter()
        value = fn(*args, **kwargs)
        seconds, rss = time.perf_counter() - t0, rss_mib()
        stages.append({"stage": name, "s": seconds, "rss_mib": rss,
                       "peak_mib": max(rss, peak_mib())})
        return value

    data = stage("read", input_path.read_bytes)
    baseline = {"rss_mib": rss_mib(), "peak_mib": peak_mib()}
    image = stage("decode", decode_image, data, max_pixels=None)
    del data  # each stage's input is dropped as soon as the next one has what it needs
    width, height = image.size
    mask = stage(MASK_STAGE, synthetic_mask, width, height, mask_kind)
    band = float(((mask > 0) & (mask < 255)).mean())
    rgba = stage("cutout", effects.cutout, image.rgb, mask)
    del image, mask
    png = stage("encode_png", encode_png, rgba)
    del rgba
    stage("write", output_path.write_bytes, png)
    peak = max([baseline["peak_mib"]] + [st["peak_mib"] for st in stages])
    return {"baseline": baseline, "stages": stages, "peak_mib": peak, "size": [width, height],
            "soft_fraction": band, "output_bytes": len(png)}


def child(args: list[str]) -> dict:
    """Run this script's --child mode in a fresh interpreter; its JSON answer."""
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", *args],
                          capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"child {args} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---- report -----------------------------------------------------------------------------------

def table(results: dict[str, list[dict]]) -> str:
    """Per mask kind: each stage's time and peak, then the process's baseline and peak."""
    lines = ["| mask | stage | time s | RSS after MiB | peak RSS in stage MiB |",
             "|---|---|---:|---:|---:|"]
    for kind, runs in results.items():
        soft = f"{kind} ({runs[0]['soft_fraction'] * 100:.0f}% soft)"
        base = max(r["baseline"]["rss_mib"] for r in runs)
        for name in STAGES:
            rows = [next(st for st in r["stages"] if st["stage"] == name) for r in runs]
            t = statistics.median(st["s"] for st in rows)
            lines.append(f"| {soft} | {name} | {t:.2f} | {max(st['rss_mib'] for st in rows):.0f} "
                         f"| {max(st['peak_mib'] for st in rows):.0f} |")
        total = statistics.median(sum(st["s"] for st in r["stages"] if st["stage"] != MASK_STAGE)
                                  for r in runs)
        peak = max(r["peak_mib"] for r in runs)
        lines.append(f"| {soft} | **whole job** (baseline {base:.0f} MiB) | **{total:.2f}** | | "
                     f"**{peak:.0f}** (+{peak - base:.0f}) |")
    return "\n".join(lines)


def machine() -> str:
    try:
        m = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
    except OSError:
        m = None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (f"{cores} cores, {m.group(1).strip() if m else platform.processor() or '?'}; "
            f"Python {platform.python_version()}")


def write_doc(path: Path, section: str) -> None:
    write_section(path, DOC_BEGIN, DOC_END, DOC_HEAD, section)


def parse_size(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)x(\d+)", text)
    if not m:
        raise argparse.ArgumentTypeError("size must look like 8000x6000")
    return int(m.group(1)), int(m.group(2))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        if argv[1] == "make-input":
            result = make_input(Path(argv[2]), int(argv[3]), int(argv[4]))
        else:
            result = run_pipeline(Path(argv[2]), Path(argv[3]), argv[1])
        print(json.dumps(result))
        return 0

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=parse_size, default=(8000, 6000), help="WxH (8000x6000)")
    p.add_argument("--masks", default="edge,soft", help="mask kinds, comma-separated: edge,soft")
    p.add_argument("--repeat", type=int, default=1,
                   help="processes per mask kind (1); times: median, memory: max")
    p.add_argument("--out", type=Path, help="markdown file whose bench_hd_memory section is "
                   "rewritten (e.g. docs/benchmarks.md); stdout only when absent")
    args = p.parse_args(argv)
    kinds = [k.strip() for k in args.masks.split(",") if k.strip()]
    if not kinds or any(k not in ("edge", "soft") for k in kinds):
        p.error("--masks takes edge and/or soft")
    width, height = args.size
    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="bench_hd_memory_") as tmp:
        src, dst = Path(tmp) / "input.png", Path(tmp) / "output.png"
        made = child(["make-input", str(src), str(width), str(height)])
        print(f"input: {width}x{height} {made['source']}, {made['png_bytes'] / 2**20:.1f} MiB PNG",
              file=sys.stderr)
        for kind in kinds:
            for i in range(args.repeat):
                run = child([kind, str(src), str(dst)])
                results.setdefault(kind, []).append(run)
                print(f"{kind} #{i + 1}: peak {run['peak_mib']:.0f} MiB, "
                      f"{sum(s['s'] for s in run['stages']):.1f} s", file=sys.stderr)
    out_mib = {k: v[0]["output_bytes"] / 2**20 for k, v in results.items()}
    now = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    facts = (f"- {now}; {machine()}; load average {load:.2f} at the end.\n"
             f"- Input: {width}x{height} {made['source']}, "
             f"{made['png_bytes'] / 2**20:.1f} MiB PNG; output RGBA PNG "
             + ", ".join(f"{k} {v:.1f} MiB" for k, v in out_mib.items())
             + f"; {args.repeat} process(es) per mask (times: median; memory: max).")
    command = ".venv/bin/python bench/bench_hd_memory.py" + (
        "" if args.size == (8000, 6000) else f" --size {width}x{height}") + (
        "" if args.masks == "edge,soft" else f" --masks {args.masks}") + (
        "" if args.repeat == 1 else f" --repeat {args.repeat}")
    body = table(results)
    print("\n" + facts + "\n\n" + body)
    if args.out:
        section = "\n".join([DOC_BEGIN, "<!-- Generated by bench/bench_hd_memory.py; everything "
                             "between these markers is rewritten on each run. -->", "", facts, "",
                             "```sh", command + " --out docs/benchmarks.md", "```", "", body, "",
                             DOC_END])
        write_doc(args.out, section)
        print(f"\nwrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
