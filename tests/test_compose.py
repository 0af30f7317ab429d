import cv2
import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from pipelines.compose import Background, Composition, compose

RED = (200, 30, 10)
CANVAS = {"width": 20, "height": 12}


def square(side: int = 4) -> np.ndarray:
    """An opaque red side x side cut-out."""
    out = np.zeros((side, side, 4), np.uint8)
    out[:] = (*RED, 255)
    return out


def comp(canvas=CANVAS, anchor="center", scale=1.0, x=0, y=0) -> Composition:
    return Composition.model_validate({
        "canvas": canvas,
        "foreground": {"anchor": anchor, "scale": scale, "offset": {"x": x, "y": y}},
    })


def box(alpha: np.ndarray) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of the non-transparent pixels."""
    ys, xs = np.nonzero(alpha)
    return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


def test_no_composition_and_transparent_background_is_the_cutout_itself():
    cut = np.random.default_rng(0).integers(0, 256, (7, 9, 4), dtype=np.uint8)
    assert compose(cut, Background(), None) is cut
    # Default composition: same size canvas, centred, scale 1 -> same pixels.
    np.testing.assert_array_equal(compose(cut, Background(), Composition()), cut)


@pytest.mark.parametrize("anchor, left, top", [
    ("top-left", 0, 0), ("top", 8, 0), ("top-right", 16, 0),
    ("left", 0, 4), ("center", 8, 4), ("right", 16, 4),
    ("bottom-left", 0, 8), ("bottom", 8, 8), ("bottom-right", 16, 8),
])
def test_anchor_places_the_subject(anchor, left, top):
    out = compose(square(), Background(), comp(anchor=anchor))
    assert out.shape == (12, 20, 4) and out.dtype == np.uint8
    assert box(out[..., 3]) == (left, top, left + 4, top + 4)
    assert (out[top:top + 4, left:left + 4] == (*RED, 255)).all()
    assert int(out[..., 3].astype(bool).sum()) == 16  # the rest stays transparent


def test_center_with_odd_free_space_rounds_down():
    out = compose(square(3), Background(), comp(canvas={"width": 10, "height": 8}))
    assert box(out[..., 3]) == (3, 2, 6, 5)


@pytest.mark.parametrize("scale, side", [(0.5, 4), (2, 16), (1.5, 12)])
def test_scale_changes_the_subject_size(scale, side):
    canvas = {"width": 40, "height": 40}
    out = compose(square(8), Background(), comp(canvas=canvas, anchor="top-left", scale=scale))
    assert box(out[..., 3]) == (0, 0, side, side)
    assert (out[:side, :side, 3] >= 250).all()  # an opaque subject stays opaque
    assert np.abs(out[:side, :side, :3].astype(int) - RED).max() <= 2


def test_scaled_edges_have_no_fringe_from_transparent_pixels():
    # Transparent pixels hold bright green; premultiplied resampling must not bleed it.
    cut = np.zeros((16, 16, 4), np.uint8)
    cut[:] = (0, 255, 0, 0)
    cut[4:12, 4:12] = (200, 0, 10, 255)
    for scale in (2.5, 0.5):
        out = compose(cut, Background(), comp(canvas={"width": 40, "height": 40}, scale=scale))
        visible = out[..., 3] > 0
        assert visible.any() and out[visible][:, 1].max() <= 5


def test_offset_moves_the_subject():
    out = compose(square(), Background(), comp(x=3, y=-2))
    assert box(out[..., 3]) == (11, 2, 15, 6)


def test_clipping_at_the_canvas_borders():
    out = compose(square(), Background(), comp(anchor="bottom-right", x=2, y=3))
    assert box(out[..., 3]) == (18, 11, 20, 12)  # 2 x 1 of the 4 x 4 square is visible
    assert (out[11, 18:20] == (*RED, 255)).all()
    out = compose(square(), Background(), comp(anchor="top-left", x=-3, y=-1))
    assert box(out[..., 3]) == (0, 0, 1, 3)
    gone = compose(square(), Background(), comp(x=100, y=0))
    assert gone.shape == (12, 20, 4) and not gone.any()


def test_clipped_scaled_part_matches_resizing_everything_then_cropping():
    # Only the visible part is resampled; it must be the same pixels as the whole resized
    # foreground cropped (Pillow may round its intermediate pass differently: +-1 level).
    rng = np.random.default_rng(1)
    colours = cv2.GaussianBlur(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8), (0, 0), 2)
    yy, xx = np.mgrid[:30, :40]
    disk = ((xx - 22) ** 2 + (yy - 14) ** 2 < 12 ** 2).astype(np.float32)
    alpha = (cv2.GaussianBlur(disk, (0, 0), 1.5) * 255 + 0.5).astype(np.uint8)
    cut = np.dstack([colours, alpha])
    out = compose(cut, Background(), comp(canvas={"width": 50, "height": 25}, scale=2.5,
                                           anchor="top-left", x=-17, y=-9))
    full = np.asarray(Image.fromarray(cut, "RGBA").resize((100, 75), Image.Resampling.LANCZOS))
    full = full[9:34, 17:67].astype(int)
    assert np.abs(out[..., 3].astype(int) - full[..., 3]).max() <= 1
    premultiplied = out[..., :3].astype(int) * out[..., 3:] // 255
    assert np.abs(premultiplied - full[..., :3] * full[..., 3:] // 255).max() <= 2


def test_color_background_is_rgb_and_blends_half_alpha():
    cut = np.zeros((2, 3, 4), np.uint8)
    cut[0, 0] = (200, 0, 0, 255)
    cut[0, 1] = (200, 0, 0, 128)
    background = Background(type="color", color="#0000ff")
    for composition in (None, Composition()):
        out = compose(cut, background, composition)
        assert out.shape == (2, 3, 3) and out.dtype == np.uint8
        assert tuple(out[0, 0]) == (200, 0, 0)
        assert tuple(out[0, 1]) == (100, 0, 127)  # 200 a + 0 (1 - a), 0 a + 255 (1 - a)
        assert (out[1] == (0, 0, 255)).all()
    out = compose(square(), background, comp(anchor="top-left"))
    assert out.shape == (12, 20, 3)
    assert (out[:4, :4] == RED).all() and (out[4:] == (0, 0, 255)).all()


def test_background_parsing():
    assert Background().rgb is None
    assert Background.model_validate({"type": "color", "color": "#ff8000"}).rgb == (255, 128, 0)
    for bad in ({"type": "color"}, {"type": "color", "color": "nocolour"},
                {"type": "transparent", "color": "#fff"}, {"type": "image"},
                {"type": "transparent", "extra": 1}):
        with pytest.raises(ValidationError):
            Background.model_validate(bad)


@pytest.mark.parametrize("patch", [
    {"foreground": {"anchor": "middle"}},
    {"foreground": {"scale": -1}},
    {"foreground": {"scale": 0}},
    {"foreground": {"scale": 17}},
    {"foreground": {"scale": float("nan")}},
    {"foreground": {"offset": {"x": 20000, "y": 0}}},
    {"canvas": {"width": 20000, "height": 100}},
    {"canvas": {"width": 0, "height": 100}},
    {"canvas": {"width": 100}},
    {"canvas": {"width": 100, "height": 100, "depth": 3}},
    {"layers": []},
])
def test_composition_validation_errors(patch):
    with pytest.raises(ValidationError):
        Composition.model_validate(patch)


def test_composition_accepts_the_spec_example():
    c = Composition.model_validate({
        "canvas": {"width": 1920, "height": 1080},
        "foreground": {"anchor": "center", "scale": 1, "offset": {"x": 0, "y": 0}},
    })
    assert c.canvas.width == 1920 and c.foreground.scale == 1.0
    assert Composition.model_validate({}).canvas is None


def test_rejects_non_rgba_input():
    with pytest.raises(ValueError):
        compose(np.zeros((4, 4, 3), np.uint8), Background(), None)
