"""Cut-out quality against exact ground truth: every installed model, `auto`, and the video
smoother before and after its ghost/dropout guards.

Images: `quality_data.samples()` (5 foregrounds with drawn, exactly known alpha x 5
backgrounds), `quality_data.real_samples()` (35 photographed subjects with their hand-made
alpha, Tux Paint's photo stamps fetched once from Debian, each over 2 backgrounds) and
`quality_data.hard_samples()` (people with no visible face before scenes with objects of their
own, animals filling the frame, several subjects, small subjects). Every image belongs to the
tuning or the test half of its subjects (bench/quality_split.json); both halves are reported,
the test half first. Per model and category: IoU, MAE, SAD, gradient error, boundary F, and the
median milliseconds per image on this machine (the models themselves, no Serve in between).
`auto` is `pipelines.auto.decide` over the candidates `AutoPolicy.candidates` names among the
installed models and the subject detector's answer, exactly as the service runs it; `auto
before` is the face-cue rule it replaced. Masks are cached on disk (`predict_cached`).

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
from pipelines.auto import (  # noqa: E402
    AutoPolicy,
    ServedModel,
    categorize,
    decide,
    most_confident,
)
from pipelines.catalog import Tier, load_catalog  # noqa: E402
from pipelines.detect import SubjectDetector  # noqa: E402
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


def _detector() -> SubjectDetector | None:
    assets = load_catalog().asset_group("detector")
    path = find_weights(assets[0], get_settings().model_search_dirs()) if assets else None
    return SubjectDetector(path, intra_op_threads=2) if path is not None else None


def auto_before(policy: AutoPolicy, rgb: np.ndarray, masks: dict) -> str:
    """The rule `auto` had before the detector (kept to measure against): a frontal face inside
    the person model's mask -> the pro model; else the more confident of pro and light."""
    person = policy.person_model
    if person and categorize(rgb, masks[person]) == "person":
        return policy.salient_models[0]
    return most_confident({m: masks[m] for m in policy.salient_models})


def score_images(models: dict[str, OnnxSegmenter], samples) -> tuple[dict, dict]:
    """{(model, half, category): [Scores]}, {model: [ms]}; `auto` (the rule the service runs:
    `pipelines.auto.decide` over its candidates and the detector) and `auto before` included.
    Masks come from the disk cache when a run made them before (`predict_cached`)."""
    catalog = load_catalog()
    policy = AutoPolicy(tuple(ServedModel(m, catalog.get(m).tier,
                                          catalog.get(m).preprocess.width
                                          / catalog.get(m).preprocess.height,
                                          catalog.get(m).recurrent) for m in models))
    detector = _detector()
    scores: dict = defaultdict(list)
    times: dict = defaultdict(list)
    for s in samples:
        half = qd.half_of(s)
        masks = {}
        for model_id, seg in models.items():
            masks[model_id], ms = predict_cached(model_id, seg, s.rgb)
            times[model_id].append(ms)
            scores[(model_id, half, s.category)].append(quality.score(masks[model_id], s.alpha))
        started = time.perf_counter()
        found = detector.detect(s.rgb) if detector is not None else None
        detect_ms = (time.perf_counter() - started) * 1e3
        times["detector"].append(detect_ms)
        candidates = policy.candidates()
        choice = decide(policy, {m: masks[m] for m in candidates}, found, s.rgb)
        # on one machine the candidates share its cores: their times add up
        times["auto"].append(detect_ms + sum(statistics.median(times[m]) for m in candidates))
        scores[("auto", half, s.category)].append(quality.score(choice.mask, s.alpha))
        started = time.perf_counter()
        before = auto_before(policy, s.rgb, masks)
        cue_ms = (time.perf_counter() - started) * 1e3
        times["auto before"].append(cue_ms + sum(statistics.median(times[m]) for m in (
            policy.person_model, *policy.salient_models) if m))
        scores[("auto before", half, s.category)].append(quality.score(masks[before], s.alpha))
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


def _groups(scores: dict, half: str) -> list[tuple[str, list[str]]]:
    """(row label, categories) for each category of a half, then the drawn and real totals and
    all."""
    categories = sorted({c for _, h, c in scores if h == half})
    drawn = [c for c in categories if not c.startswith("real")]
    real = [c for c in categories if c.startswith("real")]
    groups = [(c, [c]) for c in categories]
    if drawn and real:
        groups += [("all drawn", drawn), ("all real", real)]
    return [*groups, ("all", categories)]


def table(scores: dict, half: str) -> str:
    models = list(dict.fromkeys(m for m, _, _ in scores))
    lines = ["| model | category | n | IoU | MAE | SAD | grad | boundary F |",
             "|---|---|---|---|---|---|---|---|"]
    for model_id in models:
        for label, cats in _groups(scores, half):
            rows = [r for c in cats for r in scores[(model_id, half, c)]]
            if not rows:
                continue
            mean = {f: _mean(rows, f) for f in ("iou", "mae", "sad", "grad", "boundary_f")}
            name = f"**{model_id}**" if label.startswith("all") else model_id
            lines.append(f"| {name} | {label} | {len(rows)} | {mean['iou']:.3f} | {mean['mae']:.4f}"
                         f" | {mean['sad']:.2f} | {mean['grad']:.2f} | {mean['boundary_f']:.3f} |")
    return "\n".join(lines)


def summary(scores: dict, half: str, field: str = "sad", lower_is_better: bool = True) -> str:
    """Category x model of one metric on one half, the best single model in bold, `auto
    before` (the face-cue rule) and `auto`, and how auto compares with the best single model."""
    autos = ("auto before", "auto")
    models = [m for m in dict.fromkeys(m for m, _, _ in scores) if m not in autos]
    lines = [f"| category | n | {' | '.join(models)} | auto before | auto | auto vs best |",
             "|---|---|" + "---|" * (len(models) + 3)]
    for label, cats in _groups(scores, half):
        value = {m: _mean([r for c in cats for r in scores[(m, half, c)]], field)
                 for m in [*models, *autos]}
        n = sum(len(scores[(models[0], half, c)]) for c in cats)
        best = (min if lower_is_better else max)(models, key=value.__getitem__)
        cells = [f"**{value[m]:.3f}**" if m == best else f"{value[m]:.3f}" for m in models]
        gap = value["auto"] - value[best]
        verdict = ("best" if abs(gap) < 1e-9 else "same" if abs(gap) < 5e-4 else
                   f"{gap:+.3f} ({'better' if (gap < 0) == lower_is_better else 'worse'})")
        lines.append(f"| {label} | {n} | {' | '.join(cells)} | {value['auto before']:.3f} | "
                     f"{value['auto']:.3f} | {verdict} |")
    return "\n".join(lines)


def costs(times: dict) -> str:
    lines = ["| model | ms per 512x512 image, median |", "|---|---|"]
    lines += [f"| {m} | {statistics.median(v):.0f} |" for m, v in times.items()]
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
        samples += qd.hard_samples()
    scores, times = score_images(models, samples)
    clips = score_clips(models)
    halves = {h: sum(1 for s in samples if qd.half_of(s) == h) for h in ("tune", "test")}
    parts = [f"{BEGIN}\n_{machine()}; {len(samples)} images of {qd.SIZE}x{qd.SIZE} ({halves['tune']} "
             f"tuning, {halves['test']} test: bench/quality_split.json), "
             f"{len(qd.swinging_clip()[0])}-frame clip; `bench/bench_quality.py`._\n"]
    for half, what in (("test", "**Test half** (never tuned on)"),
                       ("tune", "Tuning half (auto's thresholds were chosen here)")):
        parts += [f"{what}: mean SAD (sum of absolute alpha errors / 1000; lower is better):\n",
                  summary(scores, half), f"\n{what}: mean IoU:\n",
                  summary(scores, half, "iou", lower_is_better=False), ""]
    parts += ["What each costs on this machine (auto: the detector plus every candidate it "
              "runs, added up as they share the cores):\n", costs(times), "",
              "Every metric, test half:\n", table(scores, "test"), "", clip_table(clips), END]
    section = "\n".join(parts)
    print(section)
    if not args.quick:
        write_section(REPO / "docs" / "benchmarks.md", BEGIN, END,
                      "## Quality against exact ground truth\n\n", section)


if __name__ == "__main__":
    main()
