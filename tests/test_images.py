import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from pipelines.errors import ImageTooLarge, InvalidImage
from pipelines.images import TOO_LARGE_MESSAGE, decode_image, encode_png

from conftest import disk_image, png_bytes


def _png_claiming(width: int, height: int) -> bytes:
    """A valid small PNG whose header is rewritten to claim a huge canvas (a bomb)."""
    data = bytearray(png_bytes(np.zeros((8, 8, 3), np.uint8)))
    ihdr = 8 + 8  # signature + length/type
    data[ihdr:ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[12:ihdr + 13])) & 0xFFFFFFFF
    data[ihdr + 13:ihdr + 17] = struct.pack(">I", crc)
    return bytes(data)


def test_rgb_png_round_trip():
    arr = disk_image()
    d = decode_image(png_bytes(arr))
    np.testing.assert_array_equal(d.rgb, arr)
    assert d.alpha is None and d.size == (96, 64) and d.format == "PNG"


@pytest.mark.parametrize("data, match", [
    (b"", "Empty image file"),
    (b"definitely not an image", "not a recognised image format"),
    (png_bytes(disk_image())[:200], "corrupt or truncated"),
])
def test_bad_files(data, match):
    with pytest.raises(InvalidImage, match=match):
        decode_image(data)


def test_decompression_bomb_refused_before_decoding():
    with pytest.raises(ImageTooLarge) as err:
        decode_image(_png_claiming(100_000, 100_000))
    assert err.value.message == TOO_LARGE_MESSAGE
    with pytest.raises(InvalidImage):  # even with no pixel limit, PIL's own guard holds
        decode_image(_png_claiming(100_000, 100_000), max_pixels=None)


def test_pixel_limit_is_inclusive_at_2048_squared():
    ok = png_bytes(np.zeros((2048, 2048, 3), np.uint8))
    assert decode_image(ok).size == (2048, 2048)
    with pytest.raises(ImageTooLarge):
        decode_image(png_bytes(np.zeros((2049, 2048, 3), np.uint8)))


def test_exif_orientation_is_honoured():
    arr = disk_image(80, 40)
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 CW on display
    d = decode_image(png_bytes(im, "JPEG", exif=exif.tobytes(), quality=95))
    assert d.size == (40, 80)


def test_palette_with_transparency_and_greyscale_alpha():
    p = Image.fromarray(disk_image()).convert("P")
    p.info["transparency"] = 0
    d = decode_image(png_bytes(p, transparency=0))
    assert d.alpha is not None and d.alpha.min() == 0 and d.rgb.shape == (64, 96, 3)
    la = Image.fromarray(np.dstack([disk_image()[..., 0], np.full((64, 96), 77, np.uint8)]), "LA")
    d = decode_image(png_bytes(la))
    assert d.alpha is not None and (d.alpha == 77).all()
    assert (d.rgb[..., 0] == d.rgb[..., 1]).all()


def test_16_bit_greyscale_is_scaled_not_clipped():
    arr = np.linspace(0, 65535, 64 * 96).reshape(64, 96).astype(np.uint16)
    d = decode_image(png_bytes(Image.fromarray(arr)))
    assert d.rgb.dtype == np.uint8 and d.rgb.max() == 255 and d.rgb.min() == 0
    assert 120 < d.rgb[32, 48, 0] < 135  # mid-grey stays mid-grey


def test_cmyk_and_rgba_inputs():
    cmyk = Image.fromarray(disk_image()).convert("CMYK")
    assert decode_image(png_bytes(cmyk, "JPEG")).rgb.shape == (64, 96, 3)
    rgba = np.dstack([disk_image(), np.full((64, 96), 200, np.uint8)])
    d = decode_image(png_bytes(rgba))
    assert (d.alpha == 200).all()


def test_encode_png_keeps_alpha():
    rgba = np.dstack([disk_image(), np.arange(64 * 96, dtype=np.uint32).reshape(64, 96).astype(np.uint8)])
    back = np.asarray(Image.open(__import__("io").BytesIO(encode_png(rgba))))
    np.testing.assert_array_equal(back, rgba)


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n0 0 moveto 8 8 lineto stroke\nshowpage\n"


def test_only_the_allowed_formats_reach_a_pillow_plugin(monkeypatch):
    """An EPS upload is refused without the EPS plugin ever looking at it (its load() runs
    Ghostscript wherever that is installed), on every route: the allow-list is the default."""
    from PIL import EpsImagePlugin

    from pipelines.errors import UnsupportedFormat

    opened = []
    real_open = EpsImagePlugin.EpsImageFile._open

    def spy(self):
        opened.append(True)
        return real_open(self)

    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", spy)
    with pytest.raises(InvalidImage, match="not a recognised image format"):
        decode_image(EPS)
    assert not opened
    gif = png_bytes(disk_image(), "GIF")
    with pytest.raises(UnsupportedFormat) as refused:  # named, then refused from its header
        decode_image(gif)
    assert refused.value.details["received"] == "image/gif"
    for fmt in ("PNG", "JPEG", "WEBP", "TIFF", "BMP"):
        assert decode_image(png_bytes(disk_image(), fmt)).size == (96, 64)
