"""Typed records of a job's parameters, written by the HTTP layer and read by the worker."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipelines.compose import Background, Composition
from pipelines.errors import InvalidParameter
from pipelines.output import OutputOptions
from pipelines.sam import MAX_POINTS, Prompt
from pipelines.textseg import split_terms


class JobPrompt(BaseModel):
    """Clicks and a box for an image job (the prompt model), in input image pixels."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    points: list[tuple[float, float]] = Field(default_factory=list, max_length=MAX_POINTS,
                                              description="Foreground clicks [[x, y], ...].")
    background_points: list[tuple[float, float]] = Field(default_factory=list,
                                                         max_length=MAX_POINTS)
    box: tuple[float, float, float, float] | None = Field(None, description="[x0, y0, x1, y1]")
    mode: Literal["refine", "replace"] = "refine"

    @model_validator(mode="after")
    def _check(self) -> JobPrompt:
        # Everything but the image's bounds (checked once the image is read).
        self.prompt().check(float("inf"), float("inf"))
        if self.mode == "replace" and not self.points and self.box is None:
            raise InvalidParameter("prompt.mode 'replace' needs a foreground point or a box.")
        return self

    def prompt(self) -> Prompt:
        return Prompt(tuple(self.points), tuple(self.background_points), self.box)


class JobParams(BaseModel):
    """What a job is to do: one record written by the API when the job is created (and when it
    is started with new settings), stored as JSON in the job row, read back by the worker."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    model_id: str = Field(description="The catalog model that segments the input.")
    model: str = Field("original", description="The public model name the caller chose.")
    output_format: str = "png"
    background: Background = Field(default_factory=Background)
    composition: Composition | None = None
    prompt: JobPrompt | None = None
    text_prompt: list[str] | None = None
    options: OutputOptions | None = Field(None, description=(
        "Image jobs: mask, crop, size cap, refinement (None: the defaults); the format is "
        "`output_format`."))
    bg_image_key: str | None = Field(None, description="Video submit: the fetched background.")
    max_duration_s: float | None = Field(None, description="Video: process at most this long.")
    original_duration_s: float | None = Field(None, description="Video: the clip's length.")

    @classmethod
    def from_stored(cls, raw: dict[str, Any]) -> JobParams:
        """The one reader of stored rows, of this version and the older ones: a `text_prompt`
        kept as the caller's string, a null background."""
        data = {k: v for k, v in raw.items() if v is not None}
        if isinstance(data.get("text_prompt"), str):
            data["text_prompt"] = split_terms(data["text_prompt"])
        return cls.model_validate(data)

    @classmethod
    def unreadable(cls) -> JobParams:
        """What a row whose stored parameters no version can read gets: a model id no
        deployment serves, so the worker fails the job with a reason instead of crashing."""
        return cls(model_id="(unreadable job parameters)")

    def stored(self) -> dict[str, Any]:
        """The JSON the job row keeps."""
        return self.model_dump(mode="json", exclude_none=True)
