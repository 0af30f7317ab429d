"""`model=auto`: which of the served models to run on an input, decided from the input.

The question that matters most is "is this a photo of a person?": person models keep a whole
person (and only the person) where general salient-object models may cut out a bookshelf
behind them, and general models are better on everything else. The cue is a frontal face
(scikit-image's LBP cascade, ~100 ms on a 320 px copy) lying inside the person model's own
mask; neither alone is enough (the person model paints cats and mugs; the cascade finds faces
in gravel). Then, per category:

- a person: the pro model where one is served (IS-Net keeps hair), else the person model whose
  input shape is closest to the image's, else a light model; for video the person model first
  (a pro model per frame is too slow on a CPU);
- anything else: the pro model *and* a light one side by side, keeping the more confident
  mask (the smaller share of undecided alpha, `uncertainty`) unless it found no subject or
  disagrees with the pro model's (`most_confident`, `pick`): on the exact-ground-truth
  benchmark this has a lower SAD than either model alone in every category (IS-Net medium and
  u2netp; chosen on that set, docs/benchmarks.md); with `compare` off, or one of them not
  served, the pro model alone, else the light one (video: light first, one model per clip).

Once people have logged enough selections for a category (`/log-selection` with
`image_category` "person" or "object"), the model they pick most often there wins instead.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Literal

import cv2
import numpy as np

from pipelines.catalog import Tier

AUTO = "auto"
Category = Literal["person", "object"]
_DETECT_SIDE = 320  # faces are looked for on a copy this large (longest side)


@dataclass(frozen=True)
class ServedModel:
    id: str
    tier: Tier
    aspect: float  # the model's input width / height


@dataclass(frozen=True)
class AutoPolicy:
    """What `auto` chooses from: the served models in the config's order, and the win rates
    (category -> model id -> (wins, offered)) people's selections give."""

    models: tuple[ServedModel, ...]
    win_rates: Mapping[str, Mapping[str, tuple[int, int]]] = field(default_factory=dict)
    min_selections: int = 20  # offered this often in a category before win rates decide
    compare: bool = True  # objects (stills): run pro and light, keep the more confident mask

    @property
    def person_model(self) -> str | None:
        """The served person model for the cue (the square selfie model when there is one)."""
        human = [m for m in self.models if m.tier is Tier.human]
        return min(human, key=lambda m: abs(m.aspect - 1.0)).id if human else None

    def choose(self, category: Category, width: int, height: int, *,
               video: bool = False) -> tuple[str, str]:
        """(model id, why) for an input of this category and size."""
        if not self.models:
            raise ValueError("no served model to choose from")
        if not video:
            winner = self._winner(category)
            if winner is not None:
                return winner, f"{category}: most picked in logged selections"
        by_tier = {t: [m for m in self.models if m.tier is t] for t in Tier}
        aspect = width / max(height, 1)
        human = sorted(by_tier[Tier.human], key=lambda m: abs(np.log(m.aspect / aspect)))
        if category == "person":
            order = ([*human, *by_tier[Tier.pro]] if video else [*by_tier[Tier.pro], *human])
            order += by_tier[Tier.light]
        else:
            fast_first = [*by_tier[Tier.light], *by_tier[Tier.pro]]
            order = fast_first if video else [*by_tier[Tier.pro], *by_tier[Tier.light]]
            order += human
        chosen = order[0]
        return chosen.id, f"{category}: {chosen.tier.value} model"

    def candidates(self, category: Category, width: int, height: int) -> tuple[str, ...]:
        """The models to run on a still image of this category: one, or for an object the pro
        and the light model whose masks `pick` chooses between."""
        if category == "object" and self.compare and self._winner(category) is None:
            pro = [m.id for m in self.models if m.tier is Tier.pro]
            light = [m.id for m in self.models if m.tier is Tier.light]
            if pro and light:
                return pro[0], light[0]
        return (self.choose(category, width, height)[0],)

    def _winner(self, category: str) -> str | None:
        served = {m.id for m in self.models}
        rates = {m: (w, n) for m, (w, n) in self.win_rates.get(category, {}).items()
                 if m in served and n >= self.min_selections}
        if not rates:
            return None
        return max(rates, key=lambda m: rates[m][0] / rates[m][1])


UNDECIDED = (26, 229)  # alpha 0.1 .. 0.9 in 8 bits: neither subject nor background
COVER = (0.005, 0.995)  # a mask covering less or more of the image found no subject
MIN_AGREEMENT = 0.5  # IoU with the first candidate's subject below which a mask is not trusted


def _thumb(mask: np.ndarray) -> np.ndarray:
    """A strided copy of at most ~512 px a side (the measures below are shares of pixels)."""
    step = max(1, max(mask.shape[:2]) // 512)
    return mask[::step, ::step]


def uncertainty(mask: np.ndarray) -> float:
    """The share of a mask's pixels a model left undecided (alpha from 0.1 to 0.9)."""
    small = _thumb(mask)
    lo, hi = UNDECIDED
    return float(np.count_nonzero((small >= lo) & (small <= hi))) / max(small.size, 1)


def _subject(mask: np.ndarray) -> np.ndarray:
    return _thumb(mask) > 127


def most_confident(masks: Mapping[str, np.ndarray]) -> str:
    """The candidate (in order of preference) whose mask leaves the fewest pixels undecided,
    among those that found a subject (covering more than 0.5 % and less than 99.5 % of the
    image) and agree with the first such candidate on where it is (IoU >= 0.5): a blank or a
    partial mask is confident too, and must not win for it. The first on a tie."""
    if not masks:
        raise ValueError("no mask to choose from")
    subjects = {m: _subject(x) for m, x in masks.items()}
    lo, hi = COVER
    found = [m for m, s in subjects.items() if lo < float(s.mean()) < hi] or list(masks)
    ref = subjects[found[0]]

    def iou(s: np.ndarray) -> float:
        return float(np.count_nonzero(s & ref)) / max(int(np.count_nonzero(s | ref)), 1)

    trusted = [m for m in found if m == found[0] or iou(subjects[m]) >= MIN_AGREEMENT]
    return min(trusted, key=lambda m: uncertainty(masks[m]))


def pick(outcomes: Mapping[str, np.ndarray | BaseException]) -> tuple[str, np.ndarray]:
    """The candidate to keep and its mask, from each candidate's mask or error (in order of
    preference): the most confident of those that answered; the first error when none did."""
    masks = {m: o for m, o in outcomes.items() if not isinstance(o, BaseException)}
    errors = [(m, o) for m, o in outcomes.items() if isinstance(o, BaseException)]
    if not masks:
        if not errors:
            raise ValueError("no candidate to choose from")
        raise errors[0][1]
    chosen = most_confident(masks)
    return chosen, masks[chosen]


@cache
def _face_cascade():
    import skimage.data
    from skimage.feature import Cascade

    return Cascade(skimage.data.lbp_frontal_face_cascade_filename())


def find_faces(rgb: np.ndarray, min_neighbors: int = 4) -> list[tuple[int, int, int, int]]:
    """Frontal faces as (x, y, width, height) in `rgb`'s pixels."""
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    h, w = gray.shape
    scale = min(1.0, _DETECT_SIDE / max(h, w))
    small = cv2.resize(gray, (max(1, round(w * scale)), max(1, round(h * scale))),
                       interpolation=cv2.INTER_AREA)
    side = min(small.shape)
    if side < 24:
        return []
    found = _face_cascade().detect_multi_scale(
        img=small, scale_factor=1.2, step_ratio=1, min_size=(max(20, int(side * 0.08)),) * 2,
        max_size=(side, side), min_neighbor_number=min_neighbors)
    return [(round(f["c"] / scale), round(f["r"] / scale), round(f["width"] / scale),
             round(f["height"] / scale)) for f in found]


def categorize(rgb: np.ndarray, person_mask: np.ndarray | None) -> Category:
    """"person" when a frontal face lies (mostly) inside the person model's mask; without a
    person model, when the face detector is sure on its own (stricter)."""
    if person_mask is None:
        return "person" if find_faces(rgb, min_neighbors=5) else "object"
    for x, y, w, h in find_faces(rgb):
        if float(np.mean(person_mask[y:y + h, x:x + w] > 127)) > 0.5:
            return "person"
    return "object"


def categorize_clip(frames: Sequence[np.ndarray],
                    person_mask: Callable[[np.ndarray], np.ndarray] | None) -> Category:
    """A clip's category from a few sampled frames: a person when any of them shows one."""
    for rgb in frames:
        mask = person_mask(rgb) if person_mask is not None else None
        if categorize(rgb, mask) == "person":
            return "person"
    return "object"
