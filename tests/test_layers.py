"""The package stack: imports point down only.

pipelines (pure image/video/model code) <- serve_app.core (settings, database, stores,
artifacts, typed job records; no Ray, no HTTP) <- deployments (Serve replicas) <- the rest of
serve_app (HTTP, builder, CLI). Neither of the two lowest layers imports Ray or an HTTP
framework. Every import statement counts, including those inside functions.
"""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

LAYERS = ("pipelines", "serve_app.core", "deployments", "serve_app")
RAY_FREE = {"ray"}
HTTP_FREE = {"fastapi", "starlette"}


def layer(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] == "pipelines":
        return 0
    if parts[:2] == ["serve_app", "core"]:
        return 1
    if parts[0] == "deployments":
        return 2
    if parts[0] == "serve_app":
        return 3
    return None


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every absolute import in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.append((node.lineno, node.module))
    return found


def module_of(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts)


def violations() -> list[str]:
    bad = []
    for top in ("pipelines", "deployments", "serve_app"):
        for path in sorted((REPO / top).rglob("*.py")):
            here = layer(module_of(path))
            assert here is not None
            for line, module in imports(path):
                there = layer(module)
                root = module.split(".")[0]
                where = f"{path.relative_to(REPO)}:{line} imports {module}"
                if there is not None and there > here:
                    bad.append(f"{where} (a higher layer)")
                elif here <= 1 and root in RAY_FREE | HTTP_FREE:
                    bad.append(f"{where} ({LAYERS[here]} stays free of Ray and HTTP)")
    return bad


def test_imports_point_down_the_stack():
    assert violations() == []


def test_the_check_sees_an_upward_import(tmp_path):
    """The rule itself, on a file written here: an upward import and Ray in the core."""
    probe = tmp_path / "probe.py"
    probe.write_text("import ray\n\ndef f():\n    from serve_app.builder import build_app\n")
    found = imports(probe)
    assert (1, "ray") in found and (4, "serve_app.builder") in found
    assert layer("serve_app.builder") > layer("serve_app.core.job_store") > layer("pipelines.video")
    assert layer("deployments.job_runner") == 2


def test_every_module_says_what_it_is_for():
    """A newcomer reads the first line of a module to know whether to read on."""
    missing = []
    for package in ("pipelines", "serve_app", "deployments"):
        for path in sorted((REPO / package).rglob("*.py")):
            doc = ast.get_docstring(ast.parse(path.read_text(), str(path)))
            if not doc or not doc.splitlines()[0].strip():
                missing.append(str(path.relative_to(REPO)))
    assert missing == [], f"modules without a first docstring line: {missing}"
