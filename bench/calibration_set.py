"""Write the committed int8 calibration set as PNG files, for `bgremove models quantize`.

The list is bench/calibration.json: the quality benchmark's tuning half (never its test half,
where the int8 quality gate is measured) and two scikit-image photos the benchmark does not
use. The images are made exactly as bench_quality.py makes them (Tux Paint's stamps are
fetched once from Debian, sha256-checked), named `NNN-<name>.png` so that the folder's name
order is the list's order: the same folder on any machine gives the same int8 build.

    .venv/bin/python bench/calibration_set.py --out ~/.cache/bgremove/calibration
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import quality_data as qd  # noqa: E402

LIST = HERE / "calibration.json"


def calibration_images() -> list[tuple[str, np.ndarray]]:
    """(name, RGB) of every image of the committed list, in its order."""
    wanted = json.loads(LIST.read_text())
    made = {s.name: s.rgb for s in (*qd.samples(), *qd.real_samples(per_subject=5),
                                     *qd.hard_samples())}
    missing = [n for n in wanted["samples"] if n not in made]
    if missing:
        raise SystemExit(f"calibration.json names images the benchmark no longer makes: {missing}")
    return ([(n, made[n]) for n in wanted["samples"]]
            + [(n, qd._photo(n)) for n in wanted["photos"]])


def write_set(folder: Path) -> list[Path]:
    """Write the set into `folder` (a former set's images removed); the files, in order."""
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("[0-9][0-9][0-9]-*.png"):
        stale.unlink()
    paths = []
    for i, (name, rgb) in enumerate(calibration_images()):
        paths.append(folder / f"{i:03d}-{re.sub(r'[^A-Za-z0-9]+', '_', name).strip('_')}.png")
        Image.fromarray(rgb).save(paths[-1])
    return paths


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    print(f"{len(write_set(args.out))} calibration images in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
