"""Request and response models: the HTTP forms, the Python handle API and /health."""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipelines.compose import Background, Composition
from pipelines.effects import parse_color
from pipelines.errors import InvalidParameter
from pipelines.output import Format, OutputOptions
from pipelines.sam import Prompt, parse_box, parse_points
from serve_app.core.job_params import JobPrompt

_MODEL_DOC = "Model id from the catalog (GET /models). Default: the app's default model."


class Effect(str, Enum):
    matte = "matte"
    blur = "blur"
    color = "color"
    gradient = "gradient"
    shadow = "shadow"


class MatteOptions(OutputOptions):
    """Transparent cut-out, optionally corrected by clicks and a box (the prompt model), with
    the output options (docs/output-options.md; the defaults give the v1 contract's PNG)."""

    model: str | None = Field(None, description=_MODEL_DOC)
    points: str | None = Field(None, max_length=2000, description=(
        "Foreground clicks 'x,y;x,y' in image pixels: the region under each click is the "
        "subject (needs the prompt model, `bgremove models pull mobilesam`)."))
    background_points: str | None = Field(None, max_length=2000, description=(
        "Background clicks 'x,y;x,y': the region under each click is removed."))
    box: str | None = Field(None, max_length=200, description=(
        "'x0,y0,x1,y1': the subject is inside this box."))
    prompt_mode: Literal["refine", "replace"] = Field("refine", description=(
        "refine: the model's mask, with clicked regions added or removed; replace: the prompt "
        "model's mask alone (needs a foreground point or a box)."))
    format: Format = Field("png", description=(
        "png; webp (lossless, keeps alpha); jpg (opaque results only: the color effect, or "
        "shadow with bg_color, or output=mask)."))

    @model_validator(mode="after")
    def _check_prompt(self):
        self.prompt()  # InvalidParameter (a ValueError) for malformed points or box
        return self

    def prompt(self) -> Prompt:
        return Prompt(parse_points(self.points), parse_points(self.background_points),
                      parse_box(self.box))


class _ColourFields(MatteOptions):
    """Options whose colour fields are checked on input (InvalidParameter is a ValueError)."""

    @model_validator(mode="after")
    def _check_colours(self):
        for name in type(self).model_fields:
            value = getattr(self, name)
            if name.endswith(("_color", "_start", "_end")) and value is not None:
                try:
                    parse_color(value)
                except InvalidParameter as exc:
                    raise InvalidParameter(f"{name}: {exc.message}") from None
        return self


class BlurOptions(MatteOptions):
    blur_strength: float = Field(
        20.0, ge=1, le=100, description="Background blur: Gaussian sigma in pixels (1-100)."
    )


class ColorOptions(_ColourFields):
    bg_color: str = Field(
        "#ffffff", description="Background colour: '#RRGGBB', 'R,G,B' or a CSS colour name."
    )


class GradientOptions(_ColourFields):
    gradient_start: str = Field("#ffffff", description="Colour where the gradient starts.")
    gradient_end: str = Field("#4a90d9", description="Colour where the gradient ends.")
    gradient_angle: float = Field(
        180.0, ge=-360, le=360,
        description="CSS linear-gradient angle in degrees: 0 bottom-to-top, 90 left-to-right, "
        "180 top-to-bottom.",
    )


class ShadowOptions(_ColourFields):
    shadow_offset_x: int = Field(12, ge=-1000, le=1000, description="Shadow shift right, px.")
    shadow_offset_y: int = Field(12, ge=-1000, le=1000, description="Shadow shift down, px.")
    shadow_blur: float = Field(12.0, ge=0, le=200, description="Shadow softness: sigma in px.")
    shadow_opacity: float = Field(0.5, ge=0, le=1, description="Shadow opacity, 0-1.")
    shadow_color: str = Field("#000000", description="Shadow colour.")
    bg_color: str | None = Field(
        None, description="Background colour under the shadow; omit for a transparent PNG."
    )


OPTIONS_BY_EFFECT: dict[Effect, type[MatteOptions]] = {
    Effect.matte: MatteOptions,
    Effect.blur: BlurOptions,
    Effect.color: ColorOptions,
    Effect.gradient: GradientOptions,
    Effect.shadow: ShadowOptions,
}

Options = BlurOptions | ColorOptions | GradientOptions | ShadowOptions | MatteOptions


class ImageJob(BaseModel):
    """Input of the Python handle API (`Ingress.process`): what the HTTP form carries."""

    image: bytes = Field(description="Encoded image file (PNG, JPEG, WebP, ...).")
    effect: Effect = Effect.matte
    options: Options = Field(default_factory=MatteOptions)

    @model_validator(mode="after")
    def _options_match_effect(self) -> ImageJob:
        expected = OPTIONS_BY_EFFECT[self.effect]
        if type(self.options) is not expected:
            self.options = expected.model_validate(self.options.model_dump(exclude_unset=True))
        return self


class ImageResult(BaseModel):
    png: bytes  # the encoded result: PNG unless the options asked for webp or jpg
    media_type: str = "image/png"
    width: int
    height: int
    model: str
    effect: Effect
    timings_ms: dict[str, float] = Field(default_factory=dict)
    # what `model=auto` found the subject to be (person, animal, object); None for a named model
    subject: Literal["person", "animal", "object"] | None = None
    auto_reason: str | None = None  # why `model=auto` kept that model


class ModelHealth(BaseModel):
    status: Literal["loaded", "starting", "unhealthy", "missing"]
    pool: str
    replicas: int = 0
    detail: str | None = None


class PoolHealth(BaseModel):
    """One replica pool (pro, light or human) and the options its deployments were given."""

    models: list[str]
    replicas: int
    ray_actor_options: dict[str, Any]
    max_ongoing_requests: int
    num_replicas: int | str | None = None
    autoscaling_config: dict[str, Any] | None = None


class DependencyHealth(BaseModel):
    status: Literal["ok", "unavailable", "full", "not_writable"]
    detail: str | None = None
    latency_ms: float | None = None
    free_bytes: int | None = None


class Health(BaseModel):
    # unhealthy: a dependency (database, storage) fails: answered with HTTP 503, so readiness
    # checks and load balancers stop sending traffic; degraded: a configured model is not
    # serving (200: the rest works).
    status: Literal["healthy", "degraded", "unhealthy"]
    version: str
    default_model: str
    # Spec 003's summary: one word per model deployment ("loaded", "missing", ...).
    services: dict[str, str]
    models: dict[str, ModelHealth]
    pools: dict[str, PoolHealth]
    # Optional features: "available", or why not ("not installed (...): run ...").
    features: dict[str, str] = Field(default_factory=dict)
    dependencies: dict[str, DependencyHealth] = Field(default_factory=dict)


class ModelInfo(BaseModel):
    id: str
    name: str
    family: str
    tier: str
    description: str
    available: bool
    detail: str | None = None
    license: str = Field(description="The weights' licence, as the catalog gives it.")
    license_terms: Literal["permissive", "copyleft", "non-commercial"]


# ---- Shotgun API (spec 003) ----------------------------------------------------------------------
OutputFormat = Literal["png", "webp"]
_IMAGE_DOC = ("Base64-encoded PNG, JPEG or WebP (a `data:` URL prefix is accepted). From Python "
              "(the app handle) raw file bytes may be passed instead.")


class _ImageSource(BaseModel):
    image: str | bytes | None = Field(None, description=_IMAGE_DOC)
    image_url: str | None = Field(None, max_length=2048, description="http(s) URL to fetch.")
    output_format: OutputFormat = Field("png", description="`png` (default) or `webp`.")


ModelId = Annotated[str, Field(min_length=1, max_length=128)]
# No NUL or other control characters (PostgreSQL text cannot hold NUL); newlines allowed in notes.
SafeText = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$"
UUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"


class RemoveBackgroundRequest(_ImageSource):
    include_models: list[ModelId] = Field(
        default_factory=lambda: ["all"], min_length=1, max_length=64,
        description='`["all"]` (default) or model ids from GET /models.',
    )


class UpscaleRequest(_ImageSource):
    scale_factor: Literal[2, 4] = 4
    preserve_alpha: bool = Field(True, description="Keep transparency (else flatten on white).")


class ProcessRequest(_ImageSource):
    bg_models: list[ModelId] = Field(default_factory=lambda: ["all"], min_length=1, max_length=64)
    upscale_factor: Literal[2, 4] = 4


class Dimensions(BaseModel):
    width: int
    height: int


class ModelResult(BaseModel):
    model_id: str
    model_name: str
    status: Literal["success"] = "success"
    image_base64: str
    image_url: str | None = Field(description="Temporary link to the same result, or null.")
    processing_time_ms: int
    cost_usd: float


class ModelFailure(BaseModel):
    model_id: str
    model_name: str
    status: Literal["error"] = "error"
    error: str
    processing_time_ms: int
    cost_usd: float = 0.0


class RemoveBackgroundResponse(BaseModel):
    job_id: str
    status: Literal["completed", "partial"]
    processing_time_ms: int
    results: list[ModelResult | ModelFailure]
    total_cost_usd: float


class UpscaleResponse(BaseModel):
    job_id: str
    status: Literal["completed"] = "completed"
    input_dimensions: Dimensions
    output_dimensions: Dimensions
    scale_factor: int
    alpha_preserved: bool
    processing_time_ms: int
    image_base64: str
    cost_usd: float = 0.0


class ProcessResult(BaseModel):
    model_id: str
    model_name: str
    bg_removal_status: Literal["success", "error"]
    upscale_status: Literal["success", "error", "skipped"]
    input_dimensions: Dimensions
    output_dimensions: Dimensions | None = None
    image_base64: str | None = None
    error: str | None = None
    processing_time_ms: int
    cost_usd: float


class ProcessResponse(BaseModel):
    job_id: str
    status: Literal["completed", "partial"]
    processing_time_ms: int
    results: list[ProcessResult]
    total_cost_usd: float


class SelectionRequest(BaseModel):
    job_id: str = Field(pattern=UUID_PATTERN, description="job_id of a /remove-background or "
                        "/process response.")
    selected_model_id: ModelId
    image_category: str | None = Field(None, max_length=64, pattern=SafeText)
    notes: str | None = Field(None, max_length=2000, pattern=SafeText)


class SelectionResponse(BaseModel):
    status: Literal["logged"] = "logged"
    selection_id: str


class WinRateRow(BaseModel):
    category: str
    model_id: str
    wins: int
    offered: int = Field(description="Selections whose job had a result from this model.")
    win_rate: float


class SelectionStats(BaseModel):
    rows: list[WinRateRow]



# ---- Async jobs: HD image (spec 000), /v1/jobs (spec 001), uploads (spec 002) ----------------
JobTier = Literal["original", "pro", "light", "human", "auto"]


class HdOptions(OutputOptions):
    """The HD submit's form fields besides the image: the model and the output options."""

    model: str | None = Field(None, description=_MODEL_DOC)
    format: Format = Field("png", description=(
        "png; webp (keeps alpha; colour at quality 90: ~10x smaller than png for large "
        "images); jpg only with output=mask (the HD result is otherwise transparent)."))

    @model_validator(mode="after")
    def _check_opaque(self):
        if self.format == "jpg" and self.output != "mask":
            raise InvalidParameter("format: jpg cannot carry the cut-out's transparency; use "
                                   "png or webp, or output=mask.", {"field": "format"})
        return self


class HdSubmitted(BaseModel):
    message: str = "Image submitted for processing"
    uuid: str
    status: Literal["processing"] = "processing"


class HdProcessing(BaseModel):
    message: str = "Task is still processing"
    uuid: str
    status: Literal["processing"] = "processing"


class TermMatches(BaseModel):
    matched: list[str]
    unmatched: list[str]


class CreateJobRequest(OutputOptions):
    """A /v1/jobs job; the output options (docs/output-options.md) are for image jobs, and
    their format is `output_format`."""

    model_config = ConfigDict(extra="forbid")

    video_url: str | None = Field(None, max_length=2048)
    image_url: str | None = Field(None, max_length=2048)
    upload_id: str | None = Field(None, max_length=64, description="From POST /api/upload.")
    model: JobTier = Field("original", description="Model tier: original (the default model), "
                           "pro, light, human, or auto (chosen per input; `model_id` says "
                           "which ran).")
    output_format: Literal["png", "webp", "jpg", "webm", "mp4", "mov"] | None = Field(
        None, description="Images: png (default), webp (keeps alpha; colour at quality 90) or "
        "jpg (needs a colour background or output=mask). Videos: webm (default, VP9 with "
        "alpha), mp4 (H.264, needs a colour background) or mov (ProRes 4444 with alpha).")
    background: Background = Field(default_factory=Background)
    composition: Composition | None = None
    prompt: JobPrompt | None = Field(None, description="Clicks/box (image jobs).")
    auto_start: bool = True
    webhook_url: str | None = Field(None, max_length=2048)
    webhook_secret: str | None = Field(None, max_length=256)


class StartJobRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: JobTier | None = None
    text_prompt: str | None = Field(None, max_length=1000, description=(
        "Comma-separated terms of what to keep (image jobs), e.g. 'person, handbag'; needs the "
        "open-vocabulary backend (`text_prompt` in the Serve config), refused without it."))
    prompt: JobPrompt | None = Field(None, description="Clicks/box (image jobs).")
    background: Background | None = None
    composition: Composition | None = None


class JobView(BaseModel):
    job_id: str
    status: Literal["created", "processing", "completed", "failed"]
    kind: str
    model: str
    model_id: str
    output_format: str
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    output_url: str | None = Field(description="Download link while the output exists.")
    output_expires_at: datetime | None
    error: str | None
    text_prompt: TermMatches | None = Field(
        None, description="Which text_prompt terms were found in the image, once completed.")


class UploadView(BaseModel):
    upload_id: str
    filename: str
    media_type: str
    kind: str
    size_bytes: int


# ---- usage (platform) -------------------------------------------------------------------------
class UsageItem(BaseModel):
    operation: str = Field(description='e.g. "image.matte", "shotgun", "hd:image", "video:video"')
    count: int
    units: float = Field(description="images, models or video seconds")
    credits: float


class Usage(BaseModel):
    key: str = Field(description="the key's name")
    balance: float
    total_credits: float = Field(description="everything charged so far")
    operations: list[UsageItem]


# ---- Backdrops and AI backgrounds --------------------------------------------------------------
class BackdropOptions(_ColourFields):
    """`/image/backdrop/v1`: the subject placed into a procedural studio scene or an uploaded
    one (not generative)."""

    scene: Literal["sweep", "gradient", "bokeh"] = Field(
        "sweep", description="sweep: a lit paper sweep; gradient: top to bottom; bokeh: soft "
        "out-of-focus lights. Ignored when a scene_image is uploaded.")
    scene_color: str = Field("#d8d4cc", description="The scene's colour (gradient: its top).")
    scene_color_end: str = Field("#8a8f99", description="gradient: the bottom colour.")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="bokeh: which arrangement of lights.")
    shadow_opacity: float = Field(0.5, ge=0, le=1, description="Contact shadow under the subject.")
    light_wrap: float = Field(0.3, ge=0, le=1, description="Scene light over the subject's edge.")
    color_match: float = Field(0.0, ge=0, le=1, description=(
        "Move the subject's colours towards the scene's (0: its pixels are kept exactly)."))


class GenerateForm(BaseModel):
    """`/image/generate/v1`: the transparent area of a cut-out painted from a prompt."""

    prompt: str = Field("a professional product photo on a clean studio background, soft light",
                        min_length=1, max_length=1000)
    negative_prompt: str = Field("", max_length=1000)
    seed: int | None = Field(None, ge=0, le=2**31 - 1, description="Same seed, same image.")
    steps: int = Field(25, ge=1, le=100)
    guidance_scale: float = Field(7.5, ge=0, le=30)
    width: int | None = Field(None, ge=64, le=4096, description="Output width (default: input).")
    height: int | None = Field(None, ge=64, le=4096)
    shadow_opacity: float = Field(0.5, ge=0, le=1)
    light_wrap: float = Field(0.3, ge=0, le=1)
