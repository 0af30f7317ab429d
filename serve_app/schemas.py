"""Request and response models: the HTTP forms, the Python handle API and /health."""

from __future__ import annotations

from enum import Enum
from typing import Literal

from pydantic import BaseModel, Field, model_validator

from pipelines.effects import parse_color
from pipelines.errors import InvalidParameter

_MODEL_DOC = "Model id from the catalog (GET /models). Default: the app's default model."


class Effect(str, Enum):
    matte = "matte"
    blur = "blur"
    color = "color"
    gradient = "gradient"
    shadow = "shadow"


class MatteOptions(BaseModel):
    """Transparent cut-out."""

    model: str | None = Field(None, description=_MODEL_DOC)


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
    png: bytes
    width: int
    height: int
    model: str
    effect: Effect
    timings_ms: dict[str, float] = Field(default_factory=dict)


class ModelHealth(BaseModel):
    status: Literal["loaded", "starting", "unhealthy", "missing"]
    tier: str
    replicas: int = 0
    detail: str | None = None


class Health(BaseModel):
    status: Literal["healthy", "degraded"]
    version: str
    default_model: str
    models: dict[str, ModelHealth]


class ModelInfo(BaseModel):
    id: str
    name: str
    family: str
    tier: str
    description: str
    available: bool
    detail: str | None = None
