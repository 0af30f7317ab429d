"""What a file is, from its first bytes: magic-number sniffing shared by uploads and video
submits (pure; no I/O)."""

from __future__ import annotations

from typing import BinaryIO

SNIFF_BYTES = 64  # enough for every magic number below

_HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"}
_AVIF_BRANDS = {b"avif", b"avis"}
_AUDIO_BRANDS = {b"M4A ", b"M4B ", b"F4A ", b"F4B "}
# First atoms of classic QuickTime files that have no `ftyp` box.
_QT_ATOMS = {b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"}


def sniff_media_type(head: bytes) -> str | None:
    """The media type the first bytes (>= 12 for every format, 64 is plenty) announce, or None.

    Recognises more than is accepted (GIF, AVI, HEIF/AVIF, 3GP, ...) so refusals can say what
    was received. ISO BMFF (`ftyp`) files are told apart by their major brand: `qt  ` ->
    video/quicktime, image and audio brands -> those, anything else -> video/mp4. EBML
    (Matroska and WebM alike) -> video/webm.
    """
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if head[:4] == b"RIFF" and len(head) >= 12:
        return {b"WEBP": "image/webp", b"AVI ": "video/x-msvideo", b"WAVE": "audio/wav"}.get(
            head[8:12]
        )
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "video/webm"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "image/tiff"
    if head[:2] == b"BM" and len(head) >= 14 and head[6:10] == b"\x00\x00\x00\x00":
        return "image/bmp"
    if head[:5] == b"%PDF-":
        return "application/pdf"
    if head[:3] == b"FLV":
        return "video/x-flv"
    if head[:4] == b"OggS":
        return "video/ogg"  # or audio only: the decoder then finds no video stream
    if head[:4] == b"\x00\x00\x01\xba":
        return "video/mpeg"  # MPEG program stream
    if len(head) >= 12 and head[4:8] == b"ftyp":
        return _sniff_iso_bmff(head)
    if len(head) >= 8 and head[4:8] in _QT_ATOMS:
        box_size = int.from_bytes(head[:4], "big")
        if box_size in (0, 1) or box_size >= 8:
            return "video/quicktime"
    return None


def _sniff_iso_bmff(head: bytes) -> str:
    major = head[8:12]
    if major == b"qt  ":
        return "video/quicktime"
    if major in _AVIF_BRANDS:
        return "image/avif"
    if major in _HEIF_BRANDS:
        return "image/heif"
    if major in _AUDIO_BRANDS:
        return "audio/mp4"
    if major.startswith(b"3g2"):
        return "video/3gpp2"
    if major.startswith(b"3g"):
        return "video/3gpp"
    return "video/mp4"




def is_video_type(media_type: str | None) -> bool:
    """A container that can hold video (the decoder still decides whether it does)."""
    return media_type is not None and media_type.startswith("video/")


def sniff_file(source: str | BinaryIO) -> str | None:
    """`sniff_media_type` of a file's first bytes (a path, or an open seekable binary file,
    read from its start and left there)."""
    if not isinstance(source, str):
        source.seek(0)
        head = source.read(SNIFF_BYTES)
        source.seek(0)
        return sniff_media_type(head)
    with open(source, "rb") as f:
        return sniff_media_type(f.read(SNIFF_BYTES))
