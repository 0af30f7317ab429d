"""`model=auto`: which of the served models to run on an input, decided from the input.

The question that matters most is "is this a photo of a person?": person models keep a whole
person (and only the person) where general salient-object models cut out the bookshelf, the cup
or the motorcycle behind them, and general models are better on everything else. Two cues,
either enough (`decide`; thresholds chosen on the benchmark's tuning half, docs/benchmarks.md):

- the subject detector (`pipelines.detect`) sees a person with a score >= 0.3;
- the two person models (RVM and the square selfie model) agree on the subject (IoU >= 0.5)
  while neither salient model agrees with them (IoU < 0.5): a person the detector missed (a
  back, a cropped body, low light), with something else behind that the salient models chose.

Stills run their candidates (`AutoPolicy.candidates`: the pro and the light model, the person
models; the detector beside them; `deployments.model_client` skips the salient ones when the
detector is sure of a person, which changes no choice) and keep, for a person, the more
confident of the person models' masks, else the more confident of the salient models'
(`most_confident`: the smaller share of undecided alpha, among masks that found a subject and
agree on where it is).
Without a detector the face cue stands in (a frontal face inside the person model's mask).
Clips decide once from a few frames (`categorize_clip`), and a person's clip goes to the
recurrent person model (RVM) when it is served.

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
from pipelines.detect import Detection, Kind

AUTO = "auto"
DETECTOR = "detector"  # the subject detector's slot among a still's outcomes
Category = Literal["person", "object"]
_DETECT_SIDE = 320  # faces are looked for on a copy this large (longest side)

# Chosen on the tuning half of the quality benchmark (bench/quality_split.json), never on its
# test half: docs/benchmarks.md has the sweep and both halves' figures.
PERSON_SCORE = 0.3  # a detected person this sure is a person
PERSON_MODELS_AGREE = 0.5  # IoU of the two person models' subjects ...
SALIENT_AGREE = 0.5  # ... while no salient model's subject overlaps theirs this much


@dataclass(frozen=True)
class ServedModel:
    id: str
    tier: Tier
    aspect: float  # the model's input width / height
    recurrent: bool = False  # a video model that carries state over frames (RVM)


@dataclass(frozen=True)
class Choice:
    """What `auto` decided for an input: the model whose mask is kept, that mask, what the
    subject is (person, animal or object) and why."""

    model_id: str
    mask: np.ndarray
    subject: Kind
    why: str


@dataclass(frozen=True)
class AutoPolicy:
    """What `auto` chooses from: the served models in the config's order, and the win rates
    (category -> model id -> (wins, offered)) people's selections give."""

    models: tuple[ServedModel, ...]
    win_rates: Mapping[str, Mapping[str, tuple[int, int]]] = field(default_factory=dict)
    min_selections: int = 20  # offered this often in a category before win rates decide
    compare: bool = True  # stills: run the pro and the light model, keep the more confident

    def _tier(self, tier: Tier) -> list[ServedModel]:
        return [m for m in self.models if m.tier is tier]

    @property
    def person_model(self) -> str | None:
        """The square (or squarest) frame-by-frame person model: the face cue's and the
        second person model of `decide`."""
        human = [m for m in self._tier(Tier.human) if not m.recurrent]
        return min(human, key=lambda m: abs(m.aspect - 1.0)).id if human else None

    @property
    def person_models(self) -> tuple[str, ...]:
        """The person models a still runs: the recurrent one (RVM) and the square one."""
        recurrent = [m.id for m in self._tier(Tier.human) if m.recurrent][:1]
        square = [self.person_model] if self.person_model else []
        return (*recurrent, *square)

    @property
    def salient_models(self) -> tuple[str, ...]:
        """The general models a still runs: the first pro and (with `compare`, or without a
        pro model) the first light model."""
        pro, light = self._tier(Tier.pro)[:1], self._tier(Tier.light)[:1]
        chosen = [*pro, *light] if self.compare or not pro else pro
        return tuple(m.id for m in chosen)

    def choose(self, category: Category, width: int, height: int, *,
               video: bool = False) -> tuple[str, str]:
        """(model id, why) for an input of this category and size: a clip's one model, or a
        still's when logged selections decide."""
        if not self.models:
            raise ValueError("no served model to choose from")
        if not video:
            winner = self._winner(category)
            if winner is not None:
                return winner, f"{category}: most picked in logged selections"
        pro, light, human = (self._tier(t) for t in (Tier.pro, Tier.light, Tier.human))
        aspect = width / max(height, 1)
        # for video a recurrent person model first, then the frame models by shape
        human.sort(key=lambda m: (not m.recurrent, abs(np.log(m.aspect / aspect))))
        if category == "person":
            order = [*human, *pro] if video else [*pro, *human]
            order += light
        else:
            order = [*light, *pro] if video else [*pro, *light]
            order += human
        chosen = order[0]
        return chosen.id, f"{category}: {chosen.tier.value} model"

    def candidates(self) -> tuple[str, ...]:
        """The models a still runs side by side (the detector runs beside them): the salient
        and the person models, and the models logged selections favour (`decide` keeps one of
        their masks)."""
        winners = [w for c in ("person", "object") if (w := self._winner(c)) is not None]
        return tuple(dict.fromkeys((*self.salient_models, *self.person_models, *winners)))

    def winner(self, category: Category) -> str | None:
        return self._winner(category)

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


def subject_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two masks' subjects (alpha > 0.5), measured on strided copies."""
    sa, sb = _subject(a), _subject(b)
    if sa.shape != sb.shape:
        sb = cv2.resize(sb.astype(np.uint8), sa.shape[::-1], interpolation=cv2.INTER_NEAREST) > 0
    return float(np.count_nonzero(sa & sb)) / max(int(np.count_nonzero(sa | sb)), 1)


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
    ref = masks[found[0]]
    trusted = [m for m in found
               if m == found[0] or subject_iou(masks[m], ref) >= MIN_AGREEMENT]
    return min(trusted, key=lambda m: uncertainty(masks[m]))


def person_score(detections: Sequence[Detection]) -> float:
    return max((d.score for d in detections if d.kind == "person"), default=0.0)


def subject_kind(detections: Sequence[Detection], person: bool) -> Kind:
    """What the subject is, as the response reports it: a person, else an animal when the
    detector's best guess is one (score >= 0.2), else an object."""
    if person:
        return "person"
    best = max(detections, key=lambda d: d.score, default=None)
    return "animal" if best is not None and best.kind == "animal" and best.score >= 0.2 \
        else "object"


def is_person(policy: AutoPolicy, detections: Sequence[Detection] | None,
              masks: Mapping[str, np.ndarray], rgb: np.ndarray | None = None) -> tuple[bool, str]:
    """Whether an image shows a person, and which cue said so (module docstring). Without a
    detector (None) the face cue stands in, when the image is given."""
    if detections is not None and person_score(detections) >= PERSON_SCORE:
        return True, f"a person detected ({person_score(detections):.2f})"
    people = [masks[m] for m in policy.person_models if m in masks]
    salient = [masks[m] for m in policy.salient_models if m in masks]
    if len(people) == 2 and subject_iou(*people) >= PERSON_MODELS_AGREE and salient and max(
            subject_iou(p, s) for p in people for s in salient) < SALIENT_AGREE:
        return True, "the person models agree on a subject the salient models did not choose"
    square = policy.person_model
    if detections is None and rgb is not None and square is not None and square in masks \
            and categorize(rgb, masks[square]) == "person":
        return True, "a face inside the person model's mask"
    return False, "no person found"


def decide(policy: AutoPolicy, outcomes: Mapping[str, np.ndarray | BaseException],
           detections: Sequence[Detection] | None, rgb: np.ndarray | None = None) -> Choice:
    """auto's choice for a still from its candidates' masks or errors (`candidates`, in order)
    and the detector's answer (None when no detector is served, or it failed): for a person the
    more confident person model's mask, else the more confident salient model's; the first error
    when no candidate answered."""
    masks = {m: o for m, o in outcomes.items() if not isinstance(o, BaseException)}
    errors = [o for o in outcomes.values() if isinstance(o, BaseException)]
    if not masks:
        if not errors:
            raise ValueError("no candidate to choose from")
        raise errors[0]
    person, why = is_person(policy, detections, masks, rgb)
    kind = subject_kind(detections or (), person)
    category: Category = "person" if person else "object"
    winner = policy.winner(category)
    if winner is not None and winner in masks:
        return Choice(winner, masks[winner], kind, f"{category}: most picked in logged selections")
    preferred = policy.person_models if person else policy.salient_models
    group = [m for m in preferred if m in masks]
    if not group:  # for a thing, a person model's mask is no answer: the salient models' error
        failed = [o for m in preferred if isinstance(o := outcomes.get(m), BaseException)]
        if failed and not person:
            raise failed[0]
        group = list(masks)
    chosen = most_confident({m: masks[m] for m in group})
    return Choice(chosen, masks[chosen], kind, why)


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
    """The face cue: "person" when a frontal face lies (mostly) inside the person model's
    mask; without a person model, when the face detector is sure on its own (stricter)."""
    if person_mask is None:
        return "person" if find_faces(rgb, min_neighbors=5) else "object"
    for x, y, w, h in find_faces(rgb):
        if float(np.mean(person_mask[y:y + h, x:x + w] > 127)) > 0.5:
            return "person"
    return "object"


def categorize_clip(frames: Sequence[np.ndarray],
                    look: Callable[[np.ndarray], tuple[bool, str]]) -> tuple[Category, str]:
    """A clip's category from a few sampled frames: a person when any of them shows one
    (`look(frame)` -> `is_person`'s answer for it)."""
    for rgb in frames:
        person, why = look(rgb)
        if person:
            return "person", why
    return "object", "no person in the sampled frames"
