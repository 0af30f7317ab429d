"""`model=auto`: the choice per input (pure policy and `decide`), the face cue on real photos
with the real person model, the shared model client (ingress and worker) with a detector and
failing candidates, and the choice through the running app."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest
from PIL import Image

from pipelines.auto import (
    AUTO,
    AutoPolicy,
    ServedModel,
    categorize,
    decide,
    most_confident,
    uncertainty,
)
from pipelines.catalog import Tier
from pipelines.detect import Detection

from conftest import media

SERVED = (ServedModel("u2netp", Tier.light, 1.0), ServedModel("isnet", Tier.pro, 1.0),
          ServedModel("selfie", Tier.human, 1.0), ServedModel("landscape", Tier.human, 256 / 144))
RVM = ServedModel("rvm", Tier.human, 1.0, recurrent=True)


def test_policy_per_category_and_medium():
    policy = AutoPolicy(SERVED)
    assert policy.choose("person", 800, 600)[0] == "isnet"
    assert policy.choose("object", 800, 600)[0] == "isnet"
    assert policy.choose("person", 1280, 720, video=True)[0] == "landscape"  # closest shape
    assert policy.choose("person", 720, 720, video=True)[0] == "selfie"
    assert policy.choose("object", 1280, 720, video=True)[0] == "u2netp"  # fast per frame
    no_pro = AutoPolicy(tuple(m for m in SERVED if m.tier is not Tier.pro))
    assert no_pro.choose("person", 600, 800)[0] == "selfie"
    assert no_pro.choose("object", 600, 800)[0] == "u2netp"
    assert policy.person_model == "selfie"
    with_rvm = AutoPolicy((*SERVED, RVM))
    assert with_rvm.choose("person", 1280, 720, video=True)[0] == "rvm"  # recurrent first
    assert with_rvm.person_model == "selfie" and with_rvm.person_models == ("rvm", "selfie")
    with pytest.raises(ValueError):
        AutoPolicy(()).choose("object", 10, 10)


def test_logged_selections_decide_once_there_are_enough():
    rates = {"person": {"selfie": (15, 20), "isnet": (5, 20)}, "object": {"u2netp": (9, 10)}}
    policy = AutoPolicy(SERVED, rates, min_selections=20)
    assert policy.choose("person", 800, 600) == ("selfie", "person: most picked in logged "
                                                           "selections")
    assert policy.choose("object", 800, 600)[0] == "isnet"  # 10 selections are not enough
    assert policy.choose("person", 800, 600, video=True)[0] == "landscape"  # not for video


def test_stills_run_the_salient_and_the_person_models_side_by_side():
    policy = AutoPolicy((*SERVED, RVM))
    assert policy.candidates() == ("isnet", "u2netp", "rvm", "selfie")
    assert AutoPolicy((*SERVED, RVM), compare=False).candidates() == ("isnet", "rvm", "selfie")
    no_pro = AutoPolicy(tuple(m for m in SERVED if m.tier is not Tier.pro))
    assert no_pro.candidates() == ("u2netp", "selfie")
    # a model people pick most often joins the candidates
    picked = AutoPolicy(SERVED, {"person": {"landscape": (18, 20)}}, min_selections=20)
    assert picked.candidates() == ("isnet", "u2netp", "selfie", "landscape")


def _disc(r: float, soft: float = 0.0, size: int = 200, cx: float = 100) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    d = np.hypot(yy - size / 2, xx - cx)
    if soft:
        return np.clip(255 * (r - d) / soft, 0, 255).astype(np.uint8)
    return np.where(d < r, 255, 0).astype(np.uint8)


def test_decide_takes_the_person_models_for_a_person_and_the_salient_ones_otherwise():
    policy = AutoPolicy((*SERVED, RVM))
    person = {"rvm": _disc(40, 4, cx=60), "selfie": _disc(40, 8, cx=60)}
    shelf = {"isnet": _disc(30, cx=150), "u2netp": _disc(30, 6, cx=150)}  # something else
    outcomes = {**shelf, **person}
    seen = [Detection("person", 0.6, (20, 60, 100, 140))]
    chosen = decide(policy, outcomes, seen)
    assert (chosen.model_id, chosen.subject) == ("rvm", "person")  # the surer person model
    # no detection, but both person models agree where the salient ones looked elsewhere
    chosen = decide(policy, outcomes, [Detection("book", 0.4, (120, 60, 180, 140))])
    assert chosen.model_id == "rvm" and "agree" in chosen.why
    # a weak person detection is not enough, nor person models the salient ones agree with
    same = {"isnet": _disc(40, cx=60), "u2netp": _disc(40, 6, cx=60), **person}
    chosen = decide(policy, same, [Detection("person", 0.2, (20, 60, 100, 140))])
    assert chosen.model_id == "isnet" and chosen.subject == "object"
    cat = decide(policy, same, [Detection("cat", 0.5, (0, 0, 200, 200))])
    assert cat.subject == "animal" and cat.model_id == "isnet"
    # a failed person model: the other person model answers for the person
    broken = {**shelf, "rvm": RuntimeError("lost"), "selfie": person["selfie"]}
    assert decide(policy, broken, seen).model_id == "selfie"
    with pytest.raises(RuntimeError, match="first"):
        decide(policy, {"isnet": RuntimeError("first"), "u2netp": OSError("second")}, None)
    # logged selections override the rule within the category found
    picked = AutoPolicy((*SERVED, RVM), {"person": {"selfie": (19, 20)}}, min_selections=20)
    assert decide(picked, outcomes, seen).model_id == "selfie"


def test_the_more_confident_mask_wins():
    crisp = np.zeros((64, 64), np.uint8)
    crisp[16:48, 16:48] = 255
    crisp[16:48, 47] = 128  # one undecided column: 32 of 4096 pixels
    yy, xx = np.mgrid[:64, :64]
    blurry = np.clip(255 - 6 * np.hypot(yy - 32, xx - 32), 0, 255).astype(np.uint8)
    assert uncertainty(crisp) == pytest.approx(32 / 4096)
    assert uncertainty(blurry) > 0.2
    assert uncertainty(np.full((8, 8), 25, np.uint8)) == 0  # 0.1 and 0.9 are the bounds
    assert uncertainty(np.full((8, 8), 26, np.uint8)) == 1
    assert most_confident({"soft": blurry, "sharp": crisp}) == "sharp"
    assert most_confident({"a": crisp, "b": crisp.copy()}) == "a"  # a tie keeps the order
    big = np.kron(crisp, np.ones((40, 40), np.uint8))  # 2560 px a side: measured on a copy
    assert uncertainty(big) == pytest.approx(32 / 4096, rel=0.2)
    with pytest.raises(ValueError):
        most_confident({})



def test_face_inside_the_person_mask_tells_people_from_things(real_models):
    from pipelines.catalog import load_catalog
    from pipelines.segmenter import OnnxSegmenter
    from pipelines.weights import find_weights

    spec = load_catalog().get("mediapipe-selfie")
    person = OnnxSegmenter(spec, find_weights(spec, [real_models]))
    photos = {name: np.asarray(Image.open(media(name)).convert("RGB"))
              for name in ("astronaut", "coffee", "chelsea")}
    found = {name: categorize(rgb, person.predict(rgb)) for name, rgb in photos.items()}
    # the cat: the person model paints it, but no human face lies inside
    assert found == {"astronaut": "person", "coffee": "object", "chelsea": "object"}
    assert categorize(photos["astronaut"], None) == "person"  # the face alone, stricter
    assert categorize(photos["coffee"], None) == "object"


@pytest.mark.serve
def test_auto_through_the_image_api_says_which_model_ran(client, real_models):
    photo = media("astronaut").read_bytes()
    r = client.post("/image/matte/v1", files={"image": ("a.png", photo, "image/png")},
                    data={"model": "auto"})
    assert r.status_code == 200, r.text
    served = {m["id"]: m["tier"] for m in client.get("/models").json() if m["available"]}
    assert r.headers["X-Model"] in served and r.headers["X-Model"] != "auto"
    # the detector sees the astronaut: a person model's mask, and the response says so
    assert r.headers["X-Type"] == "person" and served[r.headers["X-Model"]] == "human"
    assert "person" in r.headers["X-Auto-Reason"]  # and why
    named = client.post("/image/matte/v1", files={"image": ("a.png", photo, "image/png")},
                        data={"model": "tiny"})
    assert "X-Type" not in named.headers  # a named model: nothing was looked for
    cut = Image.open(io.BytesIO(r.content))
    assert cut.mode == "RGBA" and cut.size == (512, 512)


def _clip(photo: str, frames: int = 8, size: int = 256) -> bytes:
    import av

    rgb = np.asarray(Image.open(media(photo)).convert("RGB").resize((size + frames, size)))
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = size, size, "yuv420p"
        for i in range(frames):  # a slow pan
            frame = np.ascontiguousarray(rgb[:, i:i + size])
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


@pytest.mark.serve
def test_auto_video_picks_a_person_model_for_a_person_once_per_clip(client, real_models):
    from test_video_api import submit, wait_result

    served = {m["id"]: m["tier"] for m in client.get("/models").json() if m["available"]}
    chosen = {}
    for photo in ("astronaut", "coffee"):
        r = submit(client, _clip(photo), model="auto", bg_color="0,0,0")
        assert r.status_code == 202, r.text
        done = wait_result(client, r.json()["uuid"])
        assert done.status_code == 200, done.text
        chosen[photo] = done.headers["X-Model"]
    assert served[chosen["astronaut"]] == "human"  # a person model for the person
    assert served[chosen["coffee"]] == "light"  # a fast general model for the mug


def test_a_blank_full_or_partial_mask_does_not_win_for_being_sure():
    yy, xx = np.mgrid[:128, :128]
    good = np.clip(255 * (40 - np.hypot(yy - 64, xx - 64)) / 6, 0, 255).astype(np.uint8)
    assert uncertainty(good) > 0  # a soft edge
    blank, full = np.zeros_like(good), np.full_like(good, 255)
    part = np.where(np.hypot(yy - 64, xx - 64) < 15, 255, 0).astype(np.uint8)  # IoU ~0.15
    for sure_but_wrong in (blank, full, part):
        assert most_confident({"pro": good, "light": sure_but_wrong}) == "pro"
    assert most_confident({"pro": blank, "light": good}) == "light"  # the pro found nothing
    assert most_confident({"pro": blank, "light": full}) == "pro"  # nothing found: the first
    sharp = np.where(np.hypot(yy - 64, xx - 64) < 40, 255, 0).astype(np.uint8)
    assert most_confident({"pro": good, "light": sharp}) == "light"  # agrees, and surer


class _Response:
    """What a deployment handle's call returns: awaitable, cancellable."""

    def __init__(self, answer):
        self.answer, self.cancelled = answer, False

    def __await__(self):
        return self._run().__await__()

    async def _run(self):
        await asyncio.sleep(0.05)
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer, 0.01

    def cancel(self):
        self.cancelled = True


class _Handle:
    """A model replica answering a fixed mask (or failing) for whatever it is sent."""

    def __init__(self, mask_or_error):
        self.answer, self.calls = mask_or_error, []
        self.segment = self

    def remote(self, sent, native):
        self.calls.append(_Response(self.answer))
        return self.calls[-1]


class _Detector:
    """The detector replica: a fixed answer (or failure) for whatever it is sent."""

    def __init__(self, answer, response=None):
        self.answer, self.calls, self.detect = answer, [], self
        self.response = response or _Response

    def remote(self, prepared, width, height):
        assert prepared.shape == (1, 512, 512, 3) and prepared.dtype == np.uint8
        self.calls.append(self.response(self.answer))
        return self.calls[-1]


class _DetectorResponse(_Response):
    async def _run(self):
        answer = await super()._run()
        return answer[0]


def _gateway(pro, light, person, rvm=None, detections=None):
    from pipelines.catalog import load_catalog
    from serve_app.gateway import ModelGateway

    catalog = {m.id: m.model_dump(mode="json") for m in load_catalog().models}
    handles = {"isnet-imgly-medium": _Handle(pro), "u2netp": _Handle(light),
               "mediapipe-selfie": _Handle(person)}
    if rvm is not None:
        handles["rvm"] = _Handle(rvm)
    served = tuple(ServedModel(m, Tier(catalog[m]["tier"]), 1.0, catalog[m]["recurrent"])
                   for m in handles)
    detector = (_Detector(detections, _DetectorResponse) if detections is not None else None)
    gateway = ModelGateway(handles, catalog, {}, AUTO, auto_models=list(served),
                           detector=detector)  # type: ignore[arg-type]
    return gateway, handles


def test_the_gateway_runs_the_candidates_and_survives_one_failing():
    from pipelines.images import DecodedImage
    from serve_app.core.errors import ServiceUnavailable

    soft, sharp = _disc(60, 10), _disc(60)
    blank = np.zeros((200, 200), np.uint8)
    image = DecodedImage(np.full((200, 200, 3), 90, np.uint8), None, "png")  # no face

    gateway, handles = _gateway(soft, sharp, blank)
    found = asyncio.run(gateway.resolve(AUTO, image))
    assert found.model_id == "u2netp" and np.array_equal(found.mask, sharp)
    assert found.subject == "object" and found.why
    assert all(len(h.calls) == 1 for h in handles.values())  # each candidate once

    busy = ServiceUnavailable("Model 'isnet-imgly-medium' is busy; retry shortly.")
    gateway, _ = _gateway(busy, sharp, blank)
    assert asyncio.run(gateway.resolve(AUTO, image))[0] == "u2netp"  # the other answer stands

    gateway, _ = _gateway(busy, RuntimeError("light lost"), RuntimeError("person lost"))
    with pytest.raises(ServiceUnavailable, match="isnet-imgly-medium"):  # the pro's error
        asyncio.run(gateway.resolve(AUTO, image))

    gateway, handles = _gateway(soft, sharp, blank)

    async def cancelled_midway():
        task = asyncio.ensure_future(gateway.resolve(AUTO, image))
        while not handles["mediapipe-selfie"].calls:  # every candidate asked
            await asyncio.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancelled_midway())
    assert all(h.calls[0].cancelled for h in handles.values())


def test_the_gateway_asks_the_detector_and_keeps_the_person():
    """A person the detector sees: the person models' mask, not the salient models' shelf;
    the detector failing leaves the person models' agreement to decide."""
    from pipelines.images import DecodedImage

    image = DecodedImage(np.full((200, 200, 3), 90, np.uint8), None, "png")
    shelf, person = _disc(30, cx=150), _disc(40, 4, cx=60)
    seen = [Detection("person", 0.7, (20, 60, 100, 140))]
    gateway, _ = _gateway(shelf, shelf, person, rvm=person, detections=seen)
    found = asyncio.run(gateway.resolve(AUTO, image))
    assert found.subject == "person" and found.model_id in ("rvm", "mediapipe-selfie")
    assert np.array_equal(found.mask, person) and len(gateway.detector.calls) == 1
    gateway, _ = _gateway(shelf, shelf, person, rvm=person, detections=RuntimeError("down"))
    found = asyncio.run(gateway.resolve(AUTO, image))
    assert found.subject == "person" and "agree" in found.why  # what the others missed
    gateway, _ = _gateway(person, person, person, rvm=person, detections=[])
    assert asyncio.run(gateway.resolve(AUTO, image))[2] == "object"  # everyone agrees: a thing


class _SyncResponse(_Response):
    def result(self, timeout_s=None):
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer, 0.01


class _SyncHandle(_Handle):
    def remote(self, sent, native):
        self.calls.append(_SyncResponse(self.answer))
        return self.calls[-1]


def test_the_worker_keeps_the_other_candidate_and_cancels_the_failed_one(tmp_path, monkeypatch):
    from deployments.job_runner import JobWorker
    from pipelines.catalog import load_catalog
    from serve_app.core.settings import get_settings

    monkeypatch.setenv("BGR_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("BGR_DATABASE_URL", raising=False)
    get_settings.cache_clear()
    sharp = _disc(60)
    catalog = {m.id: m.model_dump(mode="json") for m in load_catalog().models}
    rgb = np.full((200, 200, 3), 90, np.uint8)  # no face: an object

    def worker(pro, light) -> JobWorker:
        handles = {"isnet-imgly-medium": _SyncHandle(pro), "u2netp": _SyncHandle(light),
                   "mediapipe-selfie": _SyncHandle(np.zeros((200, 200), np.uint8))}
        return JobWorker(models=handles,  # type: ignore[arg-type]
                         auto_models=[ServedModel(m, Tier(catalog[m]["tier"]), 1.0)
                                      for m in handles],
                         specs={m: catalog[m] for m in handles})

    workers = [worker(TimeoutError("pro timed out"), sharp),
               worker(TimeoutError("pro timed out"), RuntimeError("light lost"))]
    try:
        choice = workers[0].client.auto_sync(rgb, 5.0)
        assert choice.model_id == "u2netp" and np.array_equal(choice.mask, sharp)
        assert workers[0].client.handles["isnet-imgly-medium"].calls[0].cancelled  # type: ignore[attr-defined]
        # no salient model answered: the person model's blank mask is no answer for a thing
        with pytest.raises(TimeoutError, match="pro timed out"):  # the first error
            workers[1].client.auto_sync(rgb, 5.0)
    finally:
        for w in workers:
            w._shutdown()
        get_settings.cache_clear()


def test_a_person_the_detector_is_sure_of_never_runs_the_salient_models():
    """Stage one is the detector and the person models; the pro and light models run only
    when the detector sees no person (or no person model answered). Where it sees one, the
    answer is the one all candidates would give: a person model's mask."""
    from pipelines.images import DecodedImage

    image = DecodedImage(np.full((200, 200, 3), 90, np.uint8), None, "png")
    shelf, person = _disc(30, cx=150), _disc(40, 4, cx=60)
    seen = [Detection("person", 0.7, (20, 60, 100, 140))]
    gateway, handles = _gateway(shelf, shelf, person, rvm=person, detections=seen)
    found = asyncio.run(gateway.resolve(AUTO, image))
    assert found.subject == "person" and np.array_equal(found.mask, person)
    assert not handles["isnet-imgly-medium"].calls and not handles["u2netp"].calls
    assert len(handles["rvm"].calls) == 1 and len(handles["mediapipe-selfie"].calls) == 1

    unsure = [Detection("person", 0.2, (20, 60, 100, 140))]  # below PERSON_SCORE
    gateway, handles = _gateway(shelf, shelf, person, rvm=person, detections=unsure)
    asyncio.run(gateway.resolve(AUTO, image))
    assert all(len(h.calls) == 1 for h in handles.values())  # every candidate ran

    # a person seen, but both person models failed: the salient models answer after all
    gateway, handles = _gateway(shelf, shelf, RuntimeError("lost"), rvm=RuntimeError("lost"),
                                detections=seen)
    found = asyncio.run(gateway.resolve(AUTO, image))
    assert found.model_id in ("isnet-imgly-medium", "u2netp")
    assert len(handles["isnet-imgly-medium"].calls) == 1


def test_the_worker_skips_the_salient_models_for_a_sure_person(tmp_path, monkeypatch):
    from deployments.job_runner import JobWorker
    from pipelines.catalog import load_catalog
    from serve_app.core.settings import get_settings

    monkeypatch.setenv("BGR_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("BGR_DATABASE_URL", raising=False)
    get_settings.cache_clear()
    catalog = {m.id: m.model_dump(mode="json") for m in load_catalog().models}
    shelf, person = _disc(30, cx=150), _disc(40, 4, cx=60)
    handles = {"isnet-imgly-medium": _SyncHandle(shelf), "u2netp": _SyncHandle(shelf),
               "mediapipe-selfie": _SyncHandle(person)}

    class _SyncDetectorResponse(_SyncResponse):
        def result(self, timeout_s=None):
            return self.answer

    detector = _Detector([Detection("person", 0.8, (20, 60, 100, 140))],
                         _SyncDetectorResponse)
    worker = JobWorker(models=handles, detector=detector,  # type: ignore[arg-type]
                       auto_models=[ServedModel(m, Tier(catalog[m]["tier"]), 1.0)
                                    for m in handles],
                       specs={m: catalog[m] for m in handles})
    try:
        choice = worker.client.auto_sync(np.full((200, 200, 3), 90, np.uint8), 5.0)
        assert choice.model_id == "mediapipe-selfie" and choice.subject == "person"
        assert not handles["isnet-imgly-medium"].calls and not handles["u2netp"].calls
    finally:
        worker._shutdown()
        get_settings.cache_clear()
