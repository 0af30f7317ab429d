"""The one way a benchmark script writes its figures into a markdown file (docs/benchmarks.md)."""

from __future__ import annotations

from pathlib import Path


def write_section(path: Path, begin: str, end: str, head: str, section: str) -> None:
    """Replace the text from `begin` to `end` (markers included, `section` carries its own), or
    append `head` + `section` when the markers are not there yet."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if begin in text and end in text:
        start, stop = text.index(begin), text.index(end) + len(end)
        text = text[:start] + section + text[stop:]
    else:
        text = text.rstrip() + "\n\n" + head + section + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
