"""Batch runs: listing, manifest and resume logic (pure), one batch's work with the tiny model,
and `bgremove batch` end to end on a real local Ray (Ray Data), interrupted and resumed."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from fsspec.implementations.local import LocalFileSystem
from PIL import Image

from pipelines.batch import (
    MANIFEST,
    ManifestWriter,
    check_folders,
    list_images,
    output_names,
    pending,
    process_batch,
    read_manifest,
)
from pipelines.catalog import load_catalog
from pipelines.images import decode_image
from pipelines.render import render_image_job
from pipelines.segmenter import OnnxSegmenter

from conftest import REPO, disk_image, tiny_catalog


def _photos(folder: Path, count: int, nested: bool = True) -> list[str]:
    names = []
    for i in range(count):
        rel = f"{'sub/' if nested and i % 3 == 0 else ''}img{i:03d}.{'png' if i % 2 else 'jpg'}"
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(disk_image(60 + i, 40)).save(folder / rel)
        names.append(rel)
    return sorted(names)


@pytest.fixture
def tiny_segmenter(tiny_model, tmp_path):
    spec = load_catalog(tiny_catalog(tmp_path)).get("tiny")
    return OnnxSegmenter(spec, tiny_model)


def test_list_images_recurses_and_skips_hidden_and_other_files(tmp_path):
    names = _photos(tmp_path, 5)
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / ".cache").mkdir()
    Image.fromarray(disk_image()).save(tmp_path / ".cache" / "hidden.png")
    _, root, found = list_images(str(tmp_path))
    assert found == names and root == str(tmp_path)
    _, root, one = list_images(f"file://{tmp_path}/sub/img000.jpg")  # a URL, a single file
    assert one == ["img000.jpg"] and root == str(tmp_path / "sub")
    with pytest.raises(FileNotFoundError):
        list_images(str(tmp_path / "nope"))


def test_process_batch_matches_the_job_pipeline_and_reports_bad_inputs(tmp_path, tiny_segmenter):
    src, out = tmp_path / "in", tmp_path / "out"
    names = _photos(src, 4)
    (src / "broken.png").write_bytes(b"not a png")
    Image.fromarray(disk_image()).save(src / "anim.gif")  # decodable, but not a job format
    calls = []

    def segment_batch(images):
        calls.append(len(images))
        return tiny_segmenter.predict_batch(images)

    rows = process_batch(["broken.png", "anim.gif", *names], in_url=str(src), out_url=str(out),
                         model="tiny", segment_batch=segment_batch, max_pixels=10**7)
    assert calls == [4]  # the decodable images went through the model in one run
    assert [r.status for r in rows] == ["failed", "failed", "ok", "ok", "ok", "ok"]
    assert "not a recognised image" in rows[0].error and rows[0].output is None
    assert rows[1].error.startswith("Invalid image format")
    for row in rows[2:]:
        data = (src / row.input).read_bytes()
        expected, _ = render_image_job(data, tiny_segmenter.predict, max_pixels=10**7)
        got = decode_image((out / row.output).read_bytes(), None)
        assert row.output.endswith(".png") and (row.width, row.height) == got.size
        assert np.array_equal(got.alpha, decode_image(expected, None).alpha)
        assert np.array_equal(got.rgb, decode_image(expected, None).rgb)
    assert not list(out.rglob("*.tmp"))  # temporary names were all moved into place


def test_process_batch_model_failure_fails_rows_not_the_batch(tmp_path):
    from pipelines.errors import InferenceError

    src = tmp_path / "in"
    names = _photos(src, 2, nested=False)

    def broken(images):
        raise InferenceError("model 'x' failed: out of memory")

    rows = process_batch(names, in_url=str(src), out_url=str(tmp_path / "out"), model="x",
                         segment_batch=broken, max_pixels=10**7)
    assert {r.status for r in rows} == {"failed"} and "out of memory" in rows[0].error


def test_manifest_survives_a_cut_line_and_resume_picks_what_is_left(tmp_path):
    fs = LocalFileSystem()
    out = str(tmp_path)
    (tmp_path / "a.png").write_bytes(b"x")
    (tmp_path / "b.png").write_bytes(b"x")
    writer = ManifestWriter(fs, out)
    writer.write([
        {"input": "a.jpg", "output": "a.png", "model": "m", "status": "ok"},
        {"input": "b.jpg", "output": "b.png", "model": "m", "status": "ok"},
        {"input": "c.jpg", "output": None, "model": "m", "status": "failed"},
        {"input": "d.jpg", "output": "d.png", "model": "m", "status": "ok"},  # output lost
    ])
    writer.close()
    with open(tmp_path / MANIFEST, "a") as f:
        f.write('{"input": "e.jpg", "output": "e.pn')  # killed mid-line
    rows = read_manifest(fs, out)
    assert sorted(rows) == ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]
    inputs = ["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg"]
    png, webp = output_names(inputs, "png"), output_names(inputs, "webp")
    assert pending(png, rows, fs, out, model="m") == ["c.jpg", "d.jpg", "e.jpg"]
    # Another model or format is not "done" by these rows.
    assert pending(png, rows, fs, out, model="other") == inputs
    assert pending(webp, rows, fs, out, model="m") == inputs
    # Appending after the cut line starts a new line: the next rows parse.
    writer = ManifestWriter(fs, out)
    writer.write([{"input": "e.jpg", "output": "e.png", "model": "m", "status": "ok"}])
    writer.close()
    assert read_manifest(fs, out)["e.jpg"]["status"] == "ok"


def test_output_names_never_collide_and_output_stays_out_of_the_input():
    names = output_names(["a.jpg", "a.png", "sub/b.jpg", "c.webp"], "png")
    assert names == {"a.jpg": "a.jpg.png", "a.png": "a.png.png", "sub/b.jpg": "sub/b.png",
                     "c.webp": "c.png"}
    assert len(set(names.values())) == 4
    fs = LocalFileSystem()
    check_folders(fs, "/data/in", fs, "/data/out")
    check_folders(fs, "/data/in", fs, "/data/in-cutouts")  # a sibling whose name starts alike
    for out in ("/data/in", "/data/in/cutouts", "/data/in/"):
        with pytest.raises(ValueError, match="inside"):
            check_folders(fs, "/data/in", fs, out)


def test_manifest_on_an_object_store_is_written_in_parts():
    """fsspec's memory filesystem stands for S3/GCS here: no appends, so each flush is a new
    part, and reading merges the parts in order."""
    import fsspec

    fs = fsspec.filesystem("memory")
    root = f"/bgr-test-{os.getpid()}"
    for status in ("failed", "ok"):  # two runs: the second one's row wins
        writer = ManifestWriter(fs, root, flush_s=0)
        writer.write([{"input": "a.jpg", "output": "a.png", "model": "m", "status": status}])
        writer.write([{"input": f"{status}.jpg", "output": None, "model": "m",
                       "status": status}])
        writer.close()
    parts = fs.find(f"{root}/manifest.jsonl.d")
    assert len(parts) == 4 and not fs.exists(f"{root}/{MANIFEST}")
    rows = read_manifest(fs, root)
    assert rows["a.jpg"]["status"] == "ok" and set(rows) == {"a.jpg", "failed.jpg", "ok.jpg"}
    fs.rm(root, recursive=True)


# ---- `bgremove batch` on a real local Ray ----------------------------------------------------

def _batch_cmd(src: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "serve_app.cli", "batch", str(src), str(out), "--model", "tiny",
            "--workers", "2", "--batch-size", "2", *extra]


@pytest.fixture
def batch_env(tiny_model, tmp_path):
    env = {**os.environ, "BGR_MODELS_DIR": str(tiny_model.parent),
           "BGR_CATALOG_PATH": str(tiny_catalog(tmp_path)), "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)  # a local Ray of its own
    return env


def _manifest(out: Path) -> list[dict]:
    rows = []
    for line in (out / MANIFEST).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            pass
    return rows


@pytest.mark.serve
def test_batch_command_with_ray_data_is_resumable_after_a_kill(tmp_path, batch_env):
    src, out = tmp_path / "in", tmp_path / "out"
    names = _photos(src, 120)
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")

    # First run: killed (the whole process group, Ray included) once some rows are written.
    proc = subprocess.Popen(_batch_cmd(src, out), env=batch_env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / MANIFEST).exists() and sum(r["status"] == "ok" for r in _manifest(out)) >= 20:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    first = {r["input"]: r for r in _manifest(out) if r["status"] == "ok"}
    assert 20 <= len(first) < len(names)
    stamps = {rel: (out / r["output"]).stat().st_mtime_ns for rel, r in first.items()}

    # Second run: only what is left is done; the first run's outputs are not rewritten.
    done = subprocess.run(_batch_cmd(src, out), env=batch_env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr  # exit 1: broken.png failed
    left = len(names) - len(first)
    assert (f"121 images: {len(first)} already done, {left} cut out, 1 failed"
            in done.stdout), done.stdout
    assert "images/s" in done.stdout
    rows = _manifest(out)
    ok = {r["input"] for r in rows if r["status"] == "ok"}
    assert ok == set(names)
    assert all((out / r["output"]).stat().st_mtime_ns == stamps[rel] for rel, r in first.items())
    failed = [r for r in rows if r["status"] == "failed"]
    assert {r["input"] for r in failed} == {"broken.png"} and failed[-1]["error"]
    for rel in names:  # every cut-out is a real RGBA image of its input's size
        im = Image.open(io.BytesIO((out / rel).with_suffix(".png").read_bytes()))
        assert im.mode == "RGBA" and im.size == Image.open(src / rel).size

    # Third run: nothing left but the bad input; another model id is refused before Ray starts.
    again = subprocess.run(_batch_cmd(src, out), env=batch_env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=300)
    assert "120 already done, 0 cut out, 1 failed" in again.stdout, again.stdout + again.stderr
    bad = subprocess.run(_batch_cmd(src, out, "--model", "nope"), env=batch_env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "nope" in bad.stderr
    inside = subprocess.run(_batch_cmd(src, src / "cutouts"), env=batch_env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert inside.returncode == 2 and "inside" in inside.stderr

    # One image as the input.
    one = subprocess.run(_batch_cmd(src / names[0], tmp_path / "one"), env=batch_env,
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert "1 images: 0 already done, 1 cut out, 0 failed" in one.stdout, one.stdout + one.stderr
    # nothing from Ray on the way: no cluster-token notice, no actor warning, no Ray Data lines
    lines = one.stderr.replace("\r", "\n").splitlines()
    noise = [line for line in lines if re.search(r"WARNING|ERROR|Warning|core_worker|INFO", line)]
    assert noise == [], one.stderr
    assert (tmp_path / "one" / Path(names[0]).with_suffix(".png").name).is_file()



@pytest.mark.serve
def test_ray_job_example_sends_a_folder_through_the_app_handle(base_url, tmp_path):
    """docs/examples/ray_job_handles.py as a second driver on the app's Ray cluster (what
    `ray job submit` runs): every image through `app.process`, a bad one reported, not fatal."""
    import ray

    src, out = tmp_path / "in", tmp_path / "out"
    names = _photos(src, 6, nested=False)
    (src / "zz-bad.png").write_bytes(b"junk")
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address,
           "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, str(REPO / "docs" / "examples" / "ray_job_handles.py"),
                           str(src), str(out), "--in-flight", "4"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr[-3000:]
    assert "6 of 7 images done" in done.stdout and "zz-bad.png" in done.stderr
    for rel in names:
        im = Image.open(out / Path(rel).with_suffix(".png").name)
        alpha = np.asarray(im)[..., 3]
        assert im.mode == "RGBA" and im.size == Image.open(src / rel).size
        assert alpha[20, im.size[0] // 2] > 200 and alpha[1, 1] < 50  # subject kept, bg gone
