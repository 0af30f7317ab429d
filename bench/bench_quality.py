"""Cut-out quality against exact ground truth: every installed model, `auto`, and the video
smoother before and after its ghost/dropout guards.

Images: `quality_data.samples()` (5 foregrounds with drawn, exactly known alpha x 5
backgrounds) and `quality_data.real_samples()` (35 photographed subjects with their hand-made
alpha, Tux Paint's photo stamps fetched once from Debian, each over 2 backgrounds). Per model
and category: IoU, MAE, SAD, gradient error, boundary F, and the
median milliseconds per image on this machine (one thread pool, no Serve in between: the
models themselves). `auto` is `pipelines.auto` choosing among the installed models in the
order configs/local.yaml serves them, its cost including the person model, the face cue and,
for objects, both the pro and the light model it compares (their times added: on one machine
they share the cores).

Clips: `quality_data.swinging_clip()` (a subject with a fast arm over a sliding wall) through
each light/human model, and an oracle (the true masks with two dropped frames and edge noise),
smoothed by the old smoother (no jump gate, no hold) and the current one: dtSSD flicker, mean
and worst-frame IoU.

    .venv/bin/python bench/bench_quality.py            # writes the section of docs/benchmarks.md
    .venv/bin/python bench/bench_quality.py --quick    # 2 backgrounds, no docs update
    .venv/bin/python bench/bench_quality.py --no-real  # drawn subjects only (no download)
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))
import quality_data as qd  # noqa: E402

from pipelines import quality  # noqa: E402
from pipelines.auto import AutoPolicy, ServedModel, categorize, most_confident  # noqa: E402
from pipelines.catalog import Tier, load_catalog  # noqa: E402
from pipelines.segmenter import OnnxSegmenter  # noqa: E402
from pipelines.temporal import MaskSmoother  # noqa: E402
from pipelines.weights import find_weights  # noqa: E402
from serve_app.core.settings import get_settings  # noqa: E402

from bench_shotgun import machine  # noqa: E402
from docs_section import write_section  # noqa: E402

BEGIN, END = "<!-- BEGIN bench_quality -->", "<!-- END bench_quality -->"
ORDER = ("isnet-general-use", "birefnet-general", "isnet-imgly-medium", "isnet-imgly-small",
         "u2netp", "mediapipe-selfie", "mediapipe-selfie-landscape", "rvm")


def installed_models() -> dict[str, OnnxSegmenter]:
    catalog = load_catalog()
    dirs = get_settings().model_search_dirs()
    out = {}
    for model_id in ORDER:
        spec = catalog.get(model_id)
        path = find_weights(spec, dirs)
        if path is not None:
            out[model_id] = OnnxSegmenter(spec, path)
    return out


def mask_cache() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return root / "bgremove" / "bench" / "masks"


def predict_cached(model_id: str, seg: OnnxSegmenter, rgb: np.ndarray) -> tuple[np.ndarray, float]:
    """(mask, ms) of `model_id` on `rgb`, kept on disk by the image's and the weights' hash so
    that a rerun (another rule for auto, a docs update) does not run every model again; the
    milliseconds are those of the run that made the mask."""
    key = hashlib.sha1(rgb.tobytes() + str(rgb.shape).encode()).hexdigest()
    path = mask_cache() / f"{model_id}-{seg.spec.weights.sha256 or seg.spec.weights.md5}" / f"{key}.npz"
    if path.is_file():
        with np.load(path) as f:
            return f["mask"], float(f["ms"])
    started = time.perf_counter()
    mask = seg.predict(rgb)
    ms = (time.perf_counter() - started) * 1e3
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, mask=mask, ms=ms)
    return mask, ms


def score_images(models: dict[str, OnnxSegmenter], samples) -> tuple[dict, dict]:
    """{(model, category): [Scores]}, {model: [ms]}; `auto` included."""
    catalog = load_catalog()
    policy = AutoPolicy(tuple(ServedModel(m, catalog.get(m).tier,
                                          catalog.get(m).preprocess.width
                                          / catalog.get(m).preprocess.height) for m in models))
    scores: dict = defaultdict(list)
    times: dict = defaultdict(list)
    for s in samples:
        masks = {}
        for model_id, seg in models.items():
            started = time.perf_counter()
            masks[model_id] = seg.predict(s.rgb)
            times[model_id].append((time.perf_counter() - started) * 1e3)
            scores[(model_id, s.category)].append(quality.score(masks[model_id], s.alpha))
        started = time.perf_counter()
        person = policy.person_model
        category = categorize(s.rgb, models[person].predict(s.rgb) if person else None)
        candidates = policy.candidates(category, s.rgb.shape[1], s.rgb.shape[0])
        chosen = most_confident({m: masks[m] for m in candidates})
        cue_ms = (time.perf_counter() - started) * 1e3
        # on one machine the candidates share its cores: their times add up
        times["auto"].append(cue_ms + sum(statistics.median(times[m]) for m in candidates))
        scores[("auto", s.category)].append(quality.score(masks[chosen], s.alpha))
    return scores, times


def score_clips(models: dict[str, OnnxSegmenter]) -> list[tuple[str, str, float, float, float]]:
    """(source, smoother, dtSSD, mean IoU, worst IoU) rows."""
    frames, truths = qd.swinging_clip()
    rng = np.random.default_rng(1)
    sources: dict[str, list[np.ndarray]] = {}
    for model_id, seg in models.items():
        if seg.spec.tier is not Tier.pro:  # per-frame pro models are not how clips are run
            sources[model_id] = [seg.predict(f) for f in frames]
    oracle = []
    for t, truth in enumerate(truths):  # truth, jittered edges, two frames lost
        noisy = np.clip(truth * 255 + rng.normal(0, 40, truth.shape) * (
            (truth > 0.02) & (truth < 0.98)), 0, 255).astype(np.uint8)
        oracle.append(np.zeros_like(noisy) if t in (9, 10) else noisy)
    sources["oracle (2 frames lost)"] = oracle
    rows = []
    for name, masks in sources.items():
        for label, make in (("none", None), ("before", lambda: MaskSmoother(
                jump_threshold=None, max_hold=0)), ("after", MaskSmoother)):
            smoother = make() if make else None
            out = [smoother(f, m) if smoother else m for f, m in zip(frames, masks)]
            ious = [quality.iou(o, t) for o, t in zip(out, truths)]
            rows.append((name, label, quality.dtssd(out, truths), float(np.mean(ious)),
                         min(ious)))
    return rows


def _mean(rows, field: str) -> float:
    return statistics.fmean(getattr(r, field) for r in rows)


def _groups(scores: dict) -> list[tuple[str, list[str]]]:
    """(row label, categories) for each category, then the drawn and real totals and all."""
    categories = sorted({c for _, c in scores})
    drawn = [c for c in categories if not c.startswith("real")]
    real = [c for c in categories if c.startswith("real")]
    groups = [(c, [c]) for c in categories]
    if drawn and real:
        groups += [("all drawn", drawn), ("all real", real)]
    return [*groups, ("all", categories)]


def table(scores: dict, times: dict) -> str:
    models = list(dict.fromkeys(m for m, _ in scores))
    lines = ["| model | category | n | IoU | MAE | SAD | grad | boundary F | ms/image |",
             "|---|---|---|---|---|---|---|---|---|"]
    for model_id in models:
        for label, cats in _groups(scores):
            rows = [r for c in cats for r in scores[(model_id, c)]]
            if not rows:
                continue
            mean = {f: _mean(rows, f) for f in ("iou", "mae", "sad", "grad", "boundary_f")}
            total = label.startswith("all")
            ms = f"{statistics.median(times[model_id]):.0f}" if label == "all" else ""
            name = f"**{model_id}**" if total else model_id
            lines.append(f"| {name} | {label} | {len(rows)} | {mean['iou']:.3f} | {mean['mae']:.4f}"
                         f" | {mean['sad']:.2f} | {mean['grad']:.2f} | {mean['boundary_f']:.3f}"
                         f" | {ms} |")
    return "\n".join(lines)


def summary(scores: dict, field: str = "sad", lower_is_better: bool = True) -> str:
    """Category x model of one metric, the best single model in bold, and whether `auto`
    reaches it."""
    models = [m for m in dict.fromkeys(m for m, _ in scores) if m != "auto"]
    lines = [f"| category | {' | '.join(models)} | auto | auto vs best |",
             "|---|" + "---|" * (len(models) + 2)]
    for label, cats in _groups(scores):
        value = {m: _mean([r for c in cats for r in scores[(m, c)]], field)
                 for m in [*models, "auto"]}
        best = (min if lower_is_better else max)(models, key=value.__getitem__)
        cells = [f"**{value[m]:.3f}**" if m == best else f"{value[m]:.3f}" for m in models]
        gap = value["auto"] - value[best]
        verdict = ("best" if abs(gap) < 1e-9 else "same" if abs(gap) < 5e-4 else
                   f"{gap:+.3f} ({'better' if (gap < 0) == lower_is_better else 'worse'})")
        lines.append(f"| {label} | {' | '.join(cells)} | {value['auto']:.3f} | {verdict} |")
    return "\n".join(lines)


def clip_table(rows) -> str:
    lines = ["| masks from | smoother | dtSSD (lower is steadier) | mean IoU | worst frame IoU |",
             "|---|---|---|---|---|"]
    lines += [f"| {n} | {label} | {d:.4f} | {m:.3f} | {w:.3f} |" for n, label, d, m, w in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 backgrounds, no docs update")
    parser.add_argument("--no-real", action="store_true",
                        help="drawn subjects only (skips the one-time Debian download)")
    args = parser.parse_args()
    models = installed_models()
    if not models:
        sys.exit("no model installed: bgremove models pull u2netp isnet-imgly-medium ...")
    backgrounds = ("brick", "lookalike") if args.quick else qd.BACKGROUNDS
    samples = qd.samples(backgrounds=backgrounds)
    if not args.no_real:
        samples += qd.real_samples(backgrounds, per_subject=1 if args.quick else 2)
    scores, times = score_images(models, samples)
    clips = score_clips(models)
    section = (f"{BEGIN}\n_{machine()}; {len(samples)} images of {qd.SIZE}x{qd.SIZE}, "
               f"{len(qd.swinging_clip()[0])}-frame clip; `bench/bench_quality.py`._\n\n"
               f"Mean SAD (sum of absolute alpha errors / 1000; lower is better) by category:\n\n"
               f"{summary(scores)}\n\nMean IoU by category:\n\n"
               f"{summary(scores, 'iou', lower_is_better=False)}\n\nEvery metric:\n\n"
               f"{table(scores, times)}\n\n{clip_table(clips)}\n{END}")
    print(section)
    if not args.quick:
        write_section(REPO / "docs" / "benchmarks.md", BEGIN, END,
                      "## Quality against exact ground truth\n\n", section)


if __name__ == "__main__":
    main()
