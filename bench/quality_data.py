"""Images and clips whose true alpha is known exactly, without asking any model.

Foregrounds (alpha drawn at 4x and area-averaged, so anti-aliased edges are exact too):
- `horse`: scikit-image's horse silhouette (`skimage.data.horse`, BSD-3-Clause), thin legs;
- `ring`: a mug-like body with a handle whose hole shows the background;
- `strands`: a head-like blob with 60 hair-thin curved strands (1 to 2 px);
- `soft`: a blob whose edge fades over ~12 px (fur, motion blur);
- `holes`: a plate with six round holes.
Each is textured with a crop of a scikit-image photo (shaded so it reads as an object) and
composited, I = a F + (1 - a) B, over backgrounds: three photographic textures (`brick`,
`grass`, `gravel`), a dense colourful stain micrograph (`ihc`), and `lookalike`, a background
in the foreground's own colours. Backgrounds with objects of their own (the `rocket` photo, a
rocket on its pad; `coins`) are left out: cutting those out too is not wrong (IS-Net, trained
to find every object, does), so the pasted object's alpha would not be the exact answer.
All scikit-image sample images are CC0/BSD (its data README).

Real subjects (`real_samples`): photographed animals, plants and objects with their artists'
hand-made soft alpha (Tux Paint's photo stamps, GPL-2+, fetched once from Debian; see
`real_subjects.py`), each over two of the backgrounds above in turn.

Clips: the `strands` subject with a fast-swinging "arm", sliding over a sliding brick wall, for
temporal metrics; the truth of every frame is known.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import cv2
import numpy as np

SIZE = 512
SS = 4  # supersampling of drawn alphas
FOREGROUNDS = ("horse", "ring", "strands", "soft", "holes")
BACKGROUNDS = ("brick", "grass", "gravel", "ihc", "lookalike")
CATEGORY = {"horse": "thin parts", "ring": "holes", "strands": "thin parts", "soft": "soft edges",
            "holes": "holes"}


@dataclass(frozen=True)
class Sample:
    name: str  # "<foreground>/<background>"
    category: str
    rgb: np.ndarray  # uint8 H x W x 3
    alpha: np.ndarray  # float32 H x W in [0, 1]
    subjects: tuple[str, ...] = ()  # the drawn foreground or stamp names it shows (the split)


def _down(big: np.ndarray) -> np.ndarray:
    """Area-average a 4x drawing (uint8 0/255) to an exact anti-aliased alpha in [0, 1]."""
    h, w = big.shape[0] // SS, big.shape[1] // SS
    return cv2.resize(big.astype(np.float32) / 255.0, (w, h), interpolation=cv2.INTER_AREA)


def _canvas() -> np.ndarray:
    return np.zeros((SIZE * SS, SIZE * SS), np.uint8)


def _p(x: float, y: float) -> tuple[int, int]:
    return round(x * SS), round(y * SS)


def _horse() -> np.ndarray:
    import skimage.data

    silhouette = (~skimage.data.horse()).astype(np.uint8) * 255  # True is the white paper
    h, w = silhouette.shape
    scale = 0.8 * SIZE * SS / max(h, w)
    big = cv2.resize(silhouette, (round(w * scale), round(h * scale)),
                     interpolation=cv2.INTER_NEAREST)
    out = _canvas()
    y0, x0 = (out.shape[0] - big.shape[0]) // 2, (out.shape[1] - big.shape[1]) // 2
    out[y0:y0 + big.shape[0], x0:x0 + big.shape[1]] = big
    return _down(out)


def _ring() -> np.ndarray:
    big = _canvas()
    cv2.ellipse(big, _p(220, 270), _p(120, 160), 0, 0, 360, 255, -1)  # the body
    cv2.ellipse(big, _p(350, 260), _p(80, 95), 0, 0, 360, 255, -1)  # the handle ...
    cv2.ellipse(big, _p(350, 260), _p(45, 60), 0, 0, 360, 0, -1)  # ... and its hole
    cv2.ellipse(big, _p(220, 270), _p(120, 160), 0, 0, 360, 255, -1)  # body over the handle
    return _down(big)


def _strands(seed: int = 3, arm_angle: float | None = None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    big = _canvas()
    cx, cy = 256, 300
    cv2.ellipse(big, _p(cx, cy), _p(110, 140), 0, 0, 360, 255, -1)
    for _ in range(60):  # hair: curved polylines leaving the top of the blob
        a = rng.uniform(np.pi * 1.1, np.pi * 1.9)
        x, y = cx + 100 * np.cos(a), cy + 130 * np.sin(a)
        bend, length = rng.uniform(-0.03, 0.03), rng.uniform(60, 150)
        pts = []
        for _ in range(30):
            pts.append(_p(x, y))
            a += bend
            x, y = x + length / 30 * np.cos(a), y + length / 30 * np.sin(a)
        cv2.polylines(big, [np.array(pts, np.int32)], False, 255,
                      thickness=int(rng.integers(SS, 2 * SS + 1)), lineType=cv2.LINE_8)
    if arm_angle is not None:  # a limb swinging around the shoulder
        sx, sy = cx + 90, cy - 20
        ex, ey = sx + 170 * np.cos(arm_angle), sy + 170 * np.sin(arm_angle)
        cv2.line(big, _p(sx, sy), _p(ex, ey), 255, thickness=28 * SS)
        cv2.circle(big, _p(ex, ey), 26 * SS, 255, -1)
    return _down(big)


def _soft() -> np.ndarray:
    big = _canvas()
    cv2.ellipse(big, _p(256, 256), _p(150, 120), 20, 0, 360, 255, -1)
    alpha = _down(big)
    return cv2.GaussianBlur(alpha, (0, 0), 6.0)  # a soft edge, ~12 px from 10% to 90%


def _holes() -> np.ndarray:
    big = _canvas()
    cv2.rectangle(big, _p(90, 110), _p(420, 400), 255, -1)
    for x, y in ((160, 180), (256, 180), (350, 180), (160, 320), (256, 320), (350, 320)):
        cv2.circle(big, _p(x, y), 34 * SS, 0, -1)
    return _down(big)


ALPHAS = {"horse": _horse, "ring": _ring, "strands": _strands, "soft": _soft, "holes": _holes}


@cache
def _photo(name: str) -> np.ndarray:
    """A scikit-image sample photo by file stem (its wheel ships them)."""
    from pathlib import Path

    import skimage.data
    from PIL import Image

    folder = Path(skimage.data.__file__).parent
    path = next(folder.glob(f"{name}.*"))
    return np.asarray(Image.open(path).convert("RGB"))


def _fit(image: np.ndarray, size: int = SIZE) -> np.ndarray:
    h, w = image.shape[:2]
    s = size / min(h, w)
    image = cv2.resize(image, (max(size, round(w * s)), max(size, round(h * s))),
                       interpolation=cv2.INTER_AREA)
    y0, x0 = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
    return image[y0:y0 + size, x0:x0 + size]


FOREGROUND_TEXTURE = {"horse": "chelsea", "ring": "coffee", "strands": "astronaut",
                      "soft": "chelsea", "holes": "motorcycle_left"}


def foreground_rgb(name: str, alpha: np.ndarray) -> np.ndarray:
    """A photo crop, shaded from its top-left as a lit object would be."""
    texture = _fit(_photo(FOREGROUND_TEXTURE[name])).astype(np.float32)
    ys, xs = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / SIZE
    shade = (1.15 - 0.35 * (xs + ys) / 2)[..., None]
    inside = cv2.GaussianBlur((alpha > 0.5).astype(np.float32), (0, 0), 8)[..., None]
    return np.clip(texture * shade * (0.75 + 0.25 * inside), 0, 255).astype(np.uint8)


def background_rgb(name: str, fg: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    if name == "lookalike":  # the foreground's own colours, shuffled into a soft texture
        rng = np.random.default_rng(7)
        colours = fg[alpha > 0.5]
        noise = colours[rng.integers(0, len(colours), (SIZE // 16, SIZE // 16))]
        return cv2.resize(noise, (SIZE, SIZE), interpolation=cv2.INTER_CUBIC)
    return _fit(_photo(name))


def composite(fg: np.ndarray, bg: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha[..., None]
    return np.clip(a * fg + (1 - a) * bg + 0.5, 0, 255).astype(np.uint8)


def samples(foregrounds=FOREGROUNDS, backgrounds=BACKGROUNDS) -> list[Sample]:
    out = []
    for f in foregrounds:
        alpha = ALPHAS[f]()
        fg = foreground_rgb(f, alpha)
        for b in backgrounds:
            category = "look-alike colours" if b == "lookalike" else CATEGORY[f]
            out.append(Sample(f"{f}/{b}", category, composite(fg, background_rgb(b, fg, alpha),
                                                               alpha), alpha, (f,)))
    return out


def real_samples(backgrounds=BACKGROUNDS, per_subject: int = 2) -> list[Sample]:
    """Every stamp of `real_subjects.STAMPS`, each over `per_subject` backgrounds taken in turn
    (so each background gets its share), placed at 80 % of the canvas."""
    import real_subjects as rs

    folder = rs.ensure_stamps()
    out, turn = [], 0
    for category, names in rs.STAMPS.items():
        for name in names:
            premult, alpha = rs.place(*rs.load_stamp(folder / f"{name}.png"), SIZE)
            colour = np.clip(premult / np.maximum(alpha, 1e-6)[..., None], 0, 255).astype(np.uint8)
            for _ in range(per_subject):
                b = backgrounds[turn % len(backgrounds)]
                turn += 1
                out.append(Sample(f"{name.rsplit('/', 1)[-1]}/{b}", category,
                                  rs.compose(premult, alpha, background_rgb(b, colour, alpha)),
                                  alpha, (name,)))
    return out


def swinging_clip(frames: int = 24, size: int = 256) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(frames, true alphas) of a subject whose arm swings fast (about 25 degrees a frame) while
    the subject drifts right over a brick wall sliding left."""
    wall = _fit(_photo("brick"), size * 2)
    rgb_out, alpha_out = [], []
    for t in range(frames):
        arm = -0.3 + 1.6 * np.sin(t * 0.45)  # radians, full swing every ~14 frames
        alpha = cv2.resize(_strands(arm_angle=arm), (size, size), interpolation=cv2.INTER_AREA)
        alpha = np.roll(alpha, t * 2, axis=1)
        fg = cv2.resize(foreground_rgb("strands", ALPHAS["strands"]()), (size, size),
                        interpolation=cv2.INTER_AREA)
        fg = np.roll(fg, t * 2, axis=1)
        bg = wall[:size, t * 4: t * 4 + size]
        rgb_out.append(composite(fg, bg, alpha))
        alpha_out.append(alpha)
    return rgb_out, alpha_out


# ---- inputs unlike the benchmark's first set (issue 30) ----------------------------------------
# Scenes with objects of their own behind a person: the right cut-out is the person alone, so a
# model that also keeps the rocket, the cup or the motorcycle is wrong here (a user who sends a
# person in front of a bookshelf wants the person).
SCENES = ("rocket", "coffee", "motorcycle_left")
STAMP_CROPS = {"military/paratrooper": (0.1, 0.62, 0.5, 1.0)}  # the man, not the canopy
SPLIT_FILE = Path(__file__).with_name("quality_split.json")


@cache
def split() -> dict[str, str]:
    """subject -> "tune" | "test", from the committed split file."""
    doc = json.loads(SPLIT_FILE.read_text())
    return {**{n: "tune" for n in doc["tune"]}, **{n: "test" for n in doc["test"]}}


def half_of(sample: Sample) -> str:
    """The half a sample belongs to: its subjects' (they never straddle the split)."""
    halves = {split()[s] for s in sample.subjects}
    if len(halves) != 1:
        raise ValueError(f"{sample.name}: subjects {sample.subjects} straddle the split")
    return halves.pop()


@cache
def _stamp(name: str) -> tuple[np.ndarray, np.ndarray]:
    import real_subjects as rs

    premult, alpha = rs.load_stamp(rs.ensure_stamps() / f"{name}.png")
    if name in STAMP_CROPS:
        x0, y0, x1, y1 = STAMP_CROPS[name]
        h, w = alpha.shape
        box = (slice(round(y0 * h), round(y1 * h)), slice(round(x0 * w), round(x1 * w)))
        premult, alpha = premult[box], alpha[box]
    return premult, alpha


def put(premult: np.ndarray, alpha: np.ndarray, fill: float, centre: tuple[float, float],
        size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """The stamp scaled so its longest side is `fill` x the canvas, centred at `centre`
    (fractions of the canvas), cut where it leaves the canvas; premultiplied, so composing
    stays exact."""
    h, w = alpha.shape
    s = fill * size / max(h, w)
    nw, nh = max(1, round(w * s)), max(1, round(h * s))
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC
    a = np.clip(cv2.resize(alpha, (nw, nh), interpolation=interp), 0.0, 1.0)
    p = np.clip(cv2.resize(premult, (nw, nh), interpolation=interp), 0.0, 255.0 * a[..., None])
    out_p = np.zeros((size, size, 3), np.float32)
    out_a = np.zeros((size, size), np.float32)
    x0, y0 = round(centre[0] * size - nw / 2), round(centre[1] * size - nh / 2)
    sx, sy = max(0, -x0), max(0, -y0)
    ex, ey = min(nw, size - x0), min(nh, size - y0)
    out_p[y0 + sy:y0 + ey, x0 + sx:x0 + ex] = p[sy:ey, sx:ex]
    out_a[y0 + sy:y0 + ey, x0 + sx:x0 + ex] = a[sy:ey, sx:ex]
    return out_p, out_a


def over(layers: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Premultiplied layers stacked in order (the last on top): one premultiplied layer."""
    premult, alpha = layers[0]
    for p, a in layers[1:]:
        premult = p + (1 - a[..., None]) * premult
        alpha = a + (1 - a) * alpha
    return premult, alpha


def _compose(premult: np.ndarray, alpha: np.ndarray, background: np.ndarray) -> np.ndarray:
    image = premult + (1.0 - alpha[..., None]) * background.astype(np.float32)
    return np.clip(image + 0.5, 0, 255).astype(np.uint8)


def low_light(rgb: np.ndarray, seed: int) -> np.ndarray:
    """A dim, noisy exposure of the same scene (the alpha does not change)."""
    rng = np.random.default_rng(seed)
    dim = 255.0 * (rgb.astype(np.float32) / 255.0) ** 1.6 * 0.35
    return np.clip(dim + rng.normal(0, 3.0, rgb.shape) + 0.5, 0, 255).astype(np.uint8)


def _label(name: str) -> str:
    return name.rsplit("/", 1)[-1]


def hard_samples() -> list[Sample]:
    """What the first set lacked: people with no visible face (whole, cropped so the head is
    out of frame, in low light) in front of scenes with objects of their own; animals filling
    the frame; several subjects at once; small subjects. Every alpha is exact."""
    import real_subjects as rs

    out: list[Sample] = []
    for i, name in enumerate(rs.PEOPLE):
        whole = put(*_stamp(name), 0.85, (0.5, 0.5))
        cropped = put(*_stamp(name), 1.7, (0.5, 0.8))  # the head leaves the top, legs the bottom
        for variant, (p, a), scene in (("whole", whole, SCENES[i % 3]),
                                       ("cropped", cropped, SCENES[(i + 1) % 3]),
                                       ("low light", whole, SCENES[(i + 2) % 3])):
            rgb = _compose(p, a, _fit(_photo(scene)))
            if variant == "low light":
                rgb = low_light(rgb, i)
            out.append(Sample(f"{_label(name)}/{variant}/{scene}", "people: no face", rgb, a,
                              (name,)))
    textures = [b for b in BACKGROUNDS if b != "lookalike"]
    for i, name in enumerate(rs.STAMPS["real: fur and feathers"]):
        h, w = _stamp(name)[1].shape  # its shorter side spans the frame, the rest is cut
        p, a = put(*_stamp(name), min(2.5, 1.05 * max(h, w) / min(h, w)), (0.5, 0.5))
        b = textures[i % len(textures)]
        out.append(Sample(f"{_label(name)}/fill/{b}", "fills the frame",
                          _compose(p, a, _fit(_photo(b))), a, (name,)))
    for i, name in enumerate(rs.STAMPS["real: objects"]):
        p, a = put(*_stamp(name), 0.3, (0.3 + 0.4 * (i % 2), 0.62))
        b = textures[(i + 1) % len(textures)]
        out.append(Sample(f"{_label(name)}/small/{b}", "small subject",
                          _compose(p, a, _fit(_photo(b))), a, (name,)))
    for half in ("tune", "test"):  # pairs from one half, so no image straddles the split
        pool = [n for n in (*rs.STAMPS["real: foliage"], *rs.STAMPS["real: objects"],
                            *rs.STAMPS["real: fur and feathers"]) if split()[n] == half]
        for i in range(0, len(pool) - 1, 2):
            left, right = pool[i], pool[i + 1]
            p, a = over([put(*_stamp(left), 0.5, (0.3, 0.5)), put(*_stamp(right), 0.5, (0.7, 0.5))])
            b = textures[(i // 2) % len(textures)]
            out.append(Sample(f"{_label(left)}+{_label(right)}/{b}", "several subjects",
                              _compose(p, a, _fit(_photo(b))), a, (left, right)))
    return out


def person_clip(name: str, frames: int = 24, size: int = 256, scene: int | None = None,
                foregrounds: list[np.ndarray] | None = None
                ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(frames, true alphas) of a photographed person with no visible face walking across a
    real photo that pans the other way (a known-alpha subject moved over real footage: the
    motion is rigid and the lighting never changes, unlike real capture). `scene` picks the
    photo (an index into SCENES; by default one per person); `foregrounds`, when given, gets
    each frame's true foreground colours premultiplied by its alpha (what `put` returns)."""
    import real_subjects as rs

    assert name in rs.PEOPLE
    index = rs.PEOPLE.index(name) % 3 if scene is None else scene
    backdrop = _fit(_photo(SCENES[index]), size * 2)
    rgb_out, alpha_out = [], []
    for t in range(frames):
        bob = 0.02 * np.sin(t * 0.8)  # a walker's bounce
        p, a = put(*_stamp(name), 0.9, (0.3 + 0.4 * t / max(frames - 1, 1), 0.52 + bob), size)
        bg = backdrop[size // 2: size // 2 + size, (frames - t) * 4: (frames - t) * 4 + size]
        rgb_out.append(_compose(p, a, bg))
        alpha_out.append(a)
        if foregrounds is not None:
            foregrounds.append(p)
    return rgb_out, alpha_out
