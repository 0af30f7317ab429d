"""Typed records of a job's parameters, written by the HTTP layer and read by the worker."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipelines.errors import InvalidParameter
from pipelines.sam import MAX_POINTS, Prompt


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
