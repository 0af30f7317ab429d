"""The quality benchmark's real-subject loader (bench/real_subjects.py) on a hand-built .deb: the
ar/tar.xz walk, the pinned checksum, and compositing that keeps the stamp's alpha exact."""

from __future__ import annotations

import hashlib
import io
import lzma
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import real_subjects as rs  # noqa: E402


def _png(rgba: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="PNG")
    return buf.getvalue()


def _ar(members: dict[str, bytes]) -> bytes:
    out = bytearray(b"!<arch>\n")
    for name, data in members.items():
        header = (f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(data):<10}`\n").encode()
        assert len(header) == 60
        out += header + data + (b"\n" if len(data) % 2 else b"")
    return bytes(out)


def _deb(files: dict[str, bytes]) -> bytes:
    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(rs.PREFIX + name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    # an odd-sized first member checks the 2-byte alignment between members
    return _ar({"debian-binary": b"2.0", "control.tar.xz": b"x",
                "data.tar.xz": lzma.compress(tar.getvalue())})


@pytest.fixture
def stamp() -> np.ndarray:
    rgba = np.zeros((40, 30, 4), np.uint8)
    rgba[5:35, 5:25] = (200, 120, 40, 255)
    rgba[5:35, 25:27, 3] = 128  # a soft edge
    rgba[5:35, 25:27, :3] = (90, 60, 20)
    return rgba


def test_extract_writes_the_named_stamps(tmp_path: Path, stamp: np.ndarray) -> None:
    deb = _deb({"animals/cat.png": _png(stamp), "other/dog.png": b"not wanted"})
    rs.extract_stamps(deb, ["animals/cat"], tmp_path)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "animals/cat.png")), stamp)
    assert not (tmp_path / "other").exists()


def test_a_missing_stamp_or_member_is_an_error(tmp_path: Path, stamp: np.ndarray) -> None:
    deb = _deb({"animals/cat.png": _png(stamp)})
    with pytest.raises(rs.FetchError, match="animals/owl"):
        rs.extract_stamps(deb, ["animals/cat", "animals/owl"], tmp_path)
    with pytest.raises(rs.FetchError, match=r"data\.tar\.xz"):
        rs.ar_member(_ar({"debian-binary": b"2.0\n"}), "data.tar.xz")
    with pytest.raises(rs.FetchError, match="not an ar archive"):
        rs.ar_member(b"PK\x03\x04", "data.tar.xz")


def test_download_checks_the_pinned_sha256(tmp_path: Path) -> None:
    path = tmp_path / "pkg.deb"
    path.write_bytes(b"package bytes")
    good = hashlib.sha256(b"package bytes").hexdigest()
    assert rs.download(path.as_uri(), good) == b"package bytes"
    with pytest.raises(rs.FetchError, match="sha256"):
        rs.download(path.as_uri(), "0" * 64)


def test_place_and_compose_keep_the_alpha_exact(stamp: np.ndarray, tmp_path: Path) -> None:
    (tmp_path / "s.png").write_bytes(_png(stamp))
    premult, alpha = rs.load_stamp(tmp_path / "s.png")
    for size in (32, 128):  # shrunk (area) and enlarged (cubic)
        p, a = rs.place(premult, alpha, size)
        assert p.shape == (size, size, 3) and a.shape == (size, size)
        assert a.min() >= 0 and a.max() <= 1
        assert np.all(p <= 255 * a[..., None] + 1e-3)  # premultiplied colour never exceeds alpha
        # the stamp's longest side (40 px, 30 of them opaque) fills 80 % of the canvas
        rows = np.flatnonzero(a.max(axis=1) > 0.5)
        assert abs((rows[-1] - rows[0] + 1) - 0.8 * size * 30 / 40) <= 1.5
        # over black the image is the premultiplied colour; over white it adds (1 - a) * 255
        black = rs.compose(p, a, np.zeros((size, size, 3), np.uint8)).astype(float)
        white = rs.compose(p, a, np.full((size, size, 3), 255, np.uint8)).astype(float)
        assert np.abs(black - p).max() <= 0.5 + 1e-3
        assert np.abs(white - black - 255 * (1 - a[..., None])).max() <= 1.0 + 1e-3
