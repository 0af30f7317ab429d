"""What the docs show people: screenshots of the real product, never of the test fixtures."""

from __future__ import annotations

import json
import re

from pipelines.catalog import load_catalog

from conftest import REPO

SHOTS = REPO / "docs" / "screenshots"


def test_screenshots_were_made_with_real_models_by_the_script():
    manifest = json.loads((SHOTS / "manifest.json").read_text())
    catalog = set(load_catalog().ids)
    pngs = {p.name for p in SHOTS.glob("*.png")}
    assert pngs == set(manifest["screenshots"]), "every screenshot comes from bench/screenshots.py"
    assert manifest["config"] == "configs/local.yaml"
    for name, shown in manifest["screenshots"].items():
        assert shown["models"], f"{name}: which models it shows is unknown"
        for model_id in shown["models"]:
            assert model_id in catalog and not model_id.startswith("tiny"), (name, model_id)
    assert set(manifest["served"]) <= catalog


def test_docs_link_only_screenshots_that_exist():
    for doc in [REPO / "README.md", *(REPO / "docs").glob("*.md")]:
        for link in re.findall(r"\]\(((?:docs/)?screenshots/[^)]+)\)", doc.read_text()):
            path = (REPO / link) if link.startswith("docs/") else (REPO / "docs" / link)
            assert path.is_file(), f"{doc.name} links {link}"
