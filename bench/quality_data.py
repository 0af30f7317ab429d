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

from dataclasses import dataclass
from functools import cache

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
