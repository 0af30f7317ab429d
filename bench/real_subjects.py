"""Real photographed subjects with their true alpha: Tux Paint's photo stamps.

Debian's `tuxpaint-stamps-default` 2022.06.04-1 (GPL-2+, Bill Kendrick and the Tux Paint
contributors; many stamps are Wikimedia photos cut out by hand) ships RGBA PNG cut-outs of
animals, plants and objects: real fur, feathers and foliage with the artists' soft alpha. None
of the models scored here made these mattes, so the alpha is ground truth for any image made by
compositing the stamp over a background: I = a F + (1 - a) B exactly.

The package is fetched once per machine from a Debian mirror (pinned file, sha256-checked;
`BGR_DEBIAN_MIRROR` points elsewhere), and only the stamps below are kept in
`~/.cache/bgremove/bench/tuxpaint-stamps/`. Nothing of it is committed to this repository.
"""

from __future__ import annotations

import hashlib
import io
import lzma
import os
import shutil
import tarfile
import urllib.request
from pathlib import Path

import cv2
import numpy as np

DEB = "pool/main/t/tuxpaint-stamps/tuxpaint-stamps-default_2022.06.04-1_all.deb"
DEB_SHA256 = "6db6c1bfc870a47f1499d6203b083522eacb57c5f9c87d468f2e92eb6d9d5f34"
PREFIX = "./usr/share/tuxpaint/stamps/"
LICENCE = "GPL-2+ (tuxpaint-stamps-default 2022.06.04-1, Debian)"

# Photo-like stamps with the longest side >= 280 px, chosen by eye from a contact sheet of the
# 283 photo-like ones (no drawings, no CG renders), grouped by what makes their edges hard.
STAMPS: dict[str, tuple[str, ...]] = {
    "real: fur and feathers": (
        "animals/mammals/cats/tiger_sumatran", "animals/mammals/cats/lion-2",
        "animals/mammals/aquatic/otter", "animals/mammals/bears/european-bear",
        "animals/mammals/rodents/capybara", "animals/birds/crowned_crane",
        "animals/birds/peacock", "animals/birds/helmeted_guineafowl",
        "animals/birds/albino_peahen", "animals/mammals/bovines/indian_blackbuck",
        "animals/mammals/bovines/gnu-stand", "animals/insects/mantis", "animals/fish/lobster",
        "animals/birds/pink_flamingo", "animals/insects/Woodlouse"),
    "real: foliage": (
        "plants/trees/holm_oak", "plants/thyme", "plants/trees/rambutan",
        "plants/trees/liberia-palm", "plants/trees/tree336",
        "seasonal/christmas/Christmas_Tree_photo", "plants/flowers/daffodil", "plants/eggplant"),
    "real: objects": (
        "hobbies/music/brass/trumpet", "hobbies/music/string/guitar_electric",
        "medical/stethoscope", "hobbies/music/wind/bassoon", "household/tools/cementmixer",
        "vehicles/masstransit/green_korean_bus", "food/fruit/Cherry_Stella",
        "food/fruit/Strawberry2", "vehicles/construction/dumper", "vehicles/flight/balloon360",
        "vehicles/wheel_tractor", "seasonal/christmas/German_Christmas_toy"),
}
# Photographed people with no visible face (hooded firefighters, an astronaut in a suit seen
# from the side, a paratrooper's dark silhouette): the inputs `auto`'s face cue never saw.
PEOPLE: tuple[str, ...] = ("people/fireman200b", "people/fireman240a", "space/spacewalk",
                           "military/paratrooper")


class FetchError(RuntimeError):
    pass


def cache_dir() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return root / "bgremove" / "bench" / "tuxpaint-stamps"


def ar_member(archive: bytes, name: str) -> bytes:
    """One member of a Unix `ar` archive (a .deb is one): 8-byte magic, then 60-byte headers."""
    if archive[:8] != b"!<arch>\n":
        raise FetchError("not an ar archive")
    pos = 8
    while pos + 60 <= len(archive):
        header = archive[pos:pos + 60]
        member = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        if member == name:
            return archive[pos + 60:pos + 60 + size]
        pos += 60 + size + (size & 1)  # members are 2-byte aligned
    raise FetchError(f"{name} is not in the archive")


def extract_stamps(deb: bytes, names: list[str], target: Path) -> None:
    """Write <name>.png for each stamp name from the package's data.tar.xz into `target`."""
    data = lzma.decompress(ar_member(deb, "data.tar.xz"))
    wanted = {PREFIX + n + ".png": n for n in names}
    found = set()
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        for member in tf:
            name = wanted.get(member.name)
            if name is None or not member.isfile():
                continue
            out = target / f"{name}.png"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(tf.extractfile(member).read())  # type: ignore[union-attr]
            found.add(name)
    missing = sorted(set(names) - found)
    if missing:
        raise FetchError(f"not in the package: {', '.join(missing)}")


def download(url: str, sha256: str) -> bytes:
    digest, buf = hashlib.sha256(), io.BytesIO()
    with urllib.request.urlopen(url, timeout=60) as resp:
        while chunk := resp.read(1 << 20):
            digest.update(chunk)
            buf.write(chunk)
    if digest.hexdigest() != sha256:
        raise FetchError(f"{url} does not match its pinned sha256 {sha256[:12]}...")
    return buf.getvalue()


def ensure_stamps() -> Path:
    """The cache folder, holding every stamp in STAMPS (fetched on first use)."""
    folder = cache_dir()
    names = [n for group in STAMPS.values() for n in group] + list(PEOPLE)
    if all((folder / f"{n}.png").is_file() for n in names):
        return folder
    mirror = os.environ.get("BGR_DEBIAN_MIRROR", "https://deb.debian.org/debian").rstrip("/")
    deb = download(f"{mirror}/{DEB}", DEB_SHA256)
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    extract_stamps(deb, names, partial)
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    return folder


def load_stamp(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(premultiplied colour float32 H x W x 3, alpha float32 H x W in [0, 1])."""
    from PIL import Image

    rgba = np.asarray(Image.open(path).convert("RGBA"), np.float32)
    alpha = rgba[..., 3] / 255.0
    return rgba[..., :3] * alpha[..., None], alpha


def place(premult: np.ndarray, alpha: np.ndarray, size: int, fill: float = 0.8,
          ) -> tuple[np.ndarray, np.ndarray]:
    """The stamp scaled so its longest side is `fill` of a size x size canvas, centred.

    Colour is resized premultiplied, alongside the alpha, so composing the result
    (premult + (1 - alpha) * B) is the exact image of the scaled stamp over B."""
    h, w = alpha.shape
    s = fill * size / max(h, w)
    nw, nh = max(1, round(w * s)), max(1, round(h * s))
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC
    p = cv2.resize(premult, (nw, nh), interpolation=interp)
    a = np.clip(cv2.resize(alpha, (nw, nh), interpolation=interp), 0.0, 1.0)
    p = np.clip(p, 0.0, 255.0 * a[..., None])  # cubic overshoot must not exceed the alpha
    out_p = np.zeros((size, size, 3), np.float32)
    out_a = np.zeros((size, size), np.float32)
    y0, x0 = (size - nh) // 2, (size - nw) // 2
    out_p[y0:y0 + nh, x0:x0 + nw] = p
    out_a[y0:y0 + nh, x0:x0 + nw] = a
    return out_p, out_a


def compose(premult: np.ndarray, alpha: np.ndarray, background: np.ndarray) -> np.ndarray:
    image = premult + (1.0 - alpha[..., None]) * background.astype(np.float32)
    return np.clip(image + 0.5, 0, 255).astype(np.uint8)
