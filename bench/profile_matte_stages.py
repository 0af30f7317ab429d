"""Per-stage CPU cost of one matte request, ours vs rembg, in one process (no HTTP, no Ray).

    .venv/bin/python bench/profile_matte_stages.py [--models-dir DIR] [--repeat 20] [--threads N]

Ours: the stages `Ingress.process` + `SegmentationModel.predict` run for /image/matte/v1
(decode_image, preprocess, onnxruntime, postprocess, effects.cutout, encode_png).
rembg: the stages of `rembg.remove(bytes, session=u2netp)` (PIL open + orientation, normalize,
onnxruntime, mask resize, naive cut-out, PNG save at PIL's default level).
Both sessions get the same onnxruntime options as in the servers (ours: session_options(0);
rembg: new_session defaults). Median wall time of each stage per image (ms), one stage at a
time on an otherwise idle process, so these are the floor a server adds its overhead to; then
the same as CPU time (all threads: onnxruntime and OpenCV run on both cores), which is what
bounds throughput on a small machine.
Companion of bench/bench_matte.py; read-only use of the repository's code.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from media import PHOTOS as IMAGES  # noqa: E402
from media import media_dir  # noqa: E402

MEDIA_DIR = media_dir()


CPU: dict[str, float] = {}  # stage -> median CPU ms of the last image (all threads)


def timed(fn, repeat: int, stage: str = ""):
    """Median wall ms of `fn`; its median CPU ms (process_time: every thread) goes to CPU."""
    out = None
    times, cpu = [], []
    for _ in range(repeat):
        c0, t0 = time.process_time(), time.perf_counter()
        out = fn()
        times.append((time.perf_counter() - t0) * 1e3)
        cpu.append((time.process_time() - c0) * 1e3)
    CPU[stage] = statistics.median(cpu)
    return out, statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models-dir", type=Path,
                    default=Path(os.environ.get("BGR_MODELS_DIR", "~/.cache/bgremove/models")))
    ap.add_argument("--repeat", type=int, default=15)
    args = ap.parse_args()
    weights = args.models_dir.expanduser() / "u2netp.onnx"
    if not weights.is_file():
        print(f"SKIP: {weights} missing (bgremove models pull u2netp)", file=sys.stderr)
        return 0
    missing = [n for n in IMAGES if not (MEDIA_DIR / n).is_file()]
    if missing:
        print(f"SKIP: images missing in {MEDIA_DIR}: {missing}", file=sys.stderr)
        return 0

    from PIL import Image

    from pipelines import effects
    from pipelines.catalog import load_catalog
    from pipelines.images import decode_image, encode_png
    from pipelines.segmenter import OnnxSegmenter, postprocess, preprocess

    home = Path("/tmp/bench-profile-rembg-home/models/u2netp")
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "u2netp.onnx").exists():
        os.symlink(weights.resolve(), home / "u2netp.onnx")
    os.environ["U2NET_HOME"] = str(home.parent.parent)
    from rembg import new_session, remove
    from rembg.bg import fix_image_orientation, naive_cutout

    spec = load_catalog().get("u2netp")
    seg = OnnxSegmenter(spec, weights)
    rsess = new_session("u2netp")
    r = args.repeat

    print(f"median ms per stage, {r} repeats; onnxruntime intra-op threads: ours "
          f"{seg.session.get_session_options().intra_op_num_threads} (0 = all cores), "
          f"rembg {rsess.inner_session.get_session_options().intra_op_num_threads}")
    header = ("| image | ours decode | ours pre | ours onnx | ours post | ours cutout (Blur-Fusion)"
              " | ours PNG (level 1) | **ours total** | rembg remove() total | rembg onnx+pre+post"
              " | rembg cutout | rembg PNG (level 6) |")
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    cpu_rows = []
    for name in IMAGES:
        data = (MEDIA_DIR / name).read_bytes()
        img, t_dec = timed(lambda: decode_image(data), r, "dec")
        x, t_pre = timed(lambda: preprocess(img.rgb, spec.preprocess), r, "pre")
        raw, t_onnx = timed(lambda: seg._run(seg.session, x[None])[0], r, "onnx")
        mask, t_post = timed(lambda: postprocess(raw, spec.postprocess, img.size), r, "post")
        rgba, t_cut = timed(lambda: effects.cutout(img.rgb, mask), r, "cut")
        _, t_png = timed(lambda: encode_png(rgba), r, "png")
        ours = t_dec + t_pre + t_onnx + t_post + t_cut + t_png

        _, t_rembg = timed(lambda: remove(data, session=rsess), r, "rembg")
        pil = fix_image_orientation(Image.open(io.BytesIO(data)))
        pil.load()
        masks, t_rpred = timed(lambda: rsess.predict(pil), r, "rpred")
        cut, t_rcut = timed(lambda: naive_cutout(pil, masks[0]), r, "rcut")

        def save() -> bytes:
            buf = io.BytesIO()
            cut.save(buf, "PNG")
            return buf.getvalue()

        _, t_rpng = timed(save, r, "rpng")
        label = f"{name} {img.size[0]}x{img.size[1]}"
        print(f"| {label} | {t_dec:.1f} | {t_pre:.1f} | {t_onnx:.1f} "
              f"| {t_post:.1f} | {t_cut:.1f} | {t_png:.1f} | **{ours:.1f}** | {t_rembg:.1f} "
              f"| {t_rpred:.1f} | {t_rcut:.1f} | {t_rpng:.1f} |")
        c = dict(CPU)
        ours_cpu = sum(c[k] for k in ("dec", "pre", "onnx", "post", "cut", "png"))
        cpu_rows.append(
            f"| {label} | {c['dec']:.1f} | {c['pre']:.1f} | {c['onnx']:.1f} | {c['post']:.1f} "
            f"| {c['cut']:.1f} | {c['png']:.1f} | **{ours_cpu:.1f}** | {c['rembg']:.1f} "
            f"| {c['rpred']:.1f} | {c['rcut']:.1f} | {c['rpng']:.1f} |")
    print("\nSame stages, median CPU ms (all threads of the process):\n")
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    print("\n".join(cpu_rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
