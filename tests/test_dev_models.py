"""The development folder's extra models (../shared/models: SINet, MediaPipe Meet, u2netp with
fp16 weights), which no package registry serves. Collected only where that folder exists
(conftest.collect_ignore); the registry-served models are tested everywhere
(test_real_models.py)."""

import numpy as np
import pytest
from PIL import Image

from pipelines.catalog import load_catalog
from pipelines.images import decode_image
from pipelines.segmenter import OnnxSegmenter

from conftest import SHARED_MODELS, media
from test_real_models import iou

REF = SHARED_MODELS / "reference_outputs"


def segment(model_id: str, photo: str, precision: str = "auto") -> np.ndarray:
    spec = load_catalog().get(model_id)
    seg = OnnxSegmenter(spec, SHARED_MODELS / spec.weights.file, precision=precision)
    return seg.predict(decode_image(media(photo).read_bytes()).rgb)


@pytest.mark.parametrize("model_id, ref_name", [
    ("mediapipe-meet", "mediapipe_meet_segmentation_144x256__astronaut_mask.png"),
    ("sinet-portrait", "SINet_Softmax_simple__astronaut_mask.png"),
])
def test_person_models_cut_out_the_astronaut(model_id, ref_name):
    assert iou(segment(model_id, "astronaut"), np.asarray(Image.open(REF / ref_name))) >= 0.95


def test_u2netp_fp16_weights_mask_matches_reference():
    mask = segment("u2netp-fp16w", "coffee")
    ref = np.asarray(Image.open(REF / "u2netp_fp16w_320x320__coffee_mask.png"))
    assert iou(mask, ref) >= 0.95


@pytest.mark.parametrize("model_id", ["sinet-portrait", "mediapipe-meet", "u2netp-fp16w"])
def test_half_precision_graph_gives_the_same_cut_out(model_id):
    fp32, fp16 = segment(model_id, "astronaut", "fp32"), segment(model_id, "astronaut", "fp16")
    assert iou(fp32, fp16) >= 0.99
    assert np.abs(fp32.astype(int) - fp16.astype(int)).mean() < 1.0
