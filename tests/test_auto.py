"""`model=auto`: the choice per input (pure policy), the face-inside-person cue on real photos
with the real person model, and the choice through the running app."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest
from PIL import Image

from pipelines.auto import AUTO, AutoPolicy, ServedModel, categorize, most_confident, pick, uncertainty
from pipelines.catalog import Tier

from conftest import media

SERVED = (ServedModel("u2netp", Tier.light, 1.0), ServedModel("isnet", Tier.pro, 1.0),
          ServedModel("selfie", Tier.human, 1.0), ServedModel("landscape", Tier.human, 256 / 144))


def test_policy_per_category_and_medium():
    policy = AutoPolicy(SERVED)
    assert policy.choose("person", 800, 600)[0] == "isnet"  # pro keeps hair
    assert policy.choose("object", 800, 600)[0] == "isnet"
    assert policy.choose("person", 1280, 720, video=True)[0] == "landscape"  # closest shape
    assert policy.choose("person", 720, 720, video=True)[0] == "selfie"
    assert policy.choose("object", 1280, 720, video=True)[0] == "u2netp"  # fast per frame
    no_pro = AutoPolicy(tuple(m for m in SERVED if m.tier is not Tier.pro))
    assert no_pro.choose("person", 600, 800)[0] == "selfie"
    assert no_pro.choose("object", 600, 800)[0] == "u2netp"
    assert policy.person_model == "selfie"
    with pytest.raises(ValueError):
        AutoPolicy(()).choose("object", 10, 10)


def test_logged_selections_decide_once_there_are_enough():
    rates = {"person": {"selfie": (15, 20), "isnet": (5, 20)}, "object": {"u2netp": (9, 10)}}
    policy = AutoPolicy(SERVED, rates, min_selections=20)
    assert policy.choose("person", 800, 600) == ("selfie", "person: most picked in logged "
                                                           "selections")
    assert policy.choose("object", 800, 600)[0] == "isnet"  # 10 selections are not enough
    assert policy.choose("person", 800, 600, video=True)[0] == "landscape"  # not for video


def test_objects_compare_the_pro_and_the_light_model_unless_told_otherwise():
    policy = AutoPolicy(SERVED)
    assert policy.candidates("object", 800, 600) == ("isnet", "u2netp")
    assert policy.candidates("person", 800, 600) == ("isnet",)  # people: the pro model alone
    assert AutoPolicy(SERVED, compare=False).candidates("object", 800, 600) == ("isnet",)
    no_light = AutoPolicy(tuple(m for m in SERVED if m.tier is not Tier.light))
    assert no_light.candidates("object", 800, 600) == ("isnet",)
    no_pro = AutoPolicy(tuple(m for m in SERVED if m.tier is not Tier.pro))
    assert no_pro.candidates("object", 800, 600) == ("u2netp",)
    # once people's picks decide a category, the pick is run alone
    picked = AutoPolicy(SERVED, {"object": {"u2netp": (18, 20)}}, min_selections=20)
    assert picked.candidates("object", 800, 600) == ("u2netp",)


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
    # with failed candidates: the most confident of those that answered, else the first error
    assert pick({"pro": OSError("lost"), "light": crisp})[0] == "light"
    with pytest.raises(OSError, match="first"):
        pick({"pro": OSError("first"), "light": RuntimeError("second")})
    with pytest.raises(ValueError):
        pick({})


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
def test_auto_through_the_image_api_says_which_model_ran(client):
    photo = media("astronaut").read_bytes()
    r = client.post("/image/matte/v1", files={"image": ("a.png", photo, "image/png")},
                    data={"model": "auto"})
    assert r.status_code == 200, r.text
    served = {m["id"] for m in client.get("/models").json() if m["available"]}
    assert r.headers["X-Model"] in served and r.headers["X-Model"] != "auto"
    assert r.headers["X-Model"] == "tiny-pro"  # the test app's pro model
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


def _gateway(pro, light, person):
    from pipelines.catalog import load_catalog
    from serve_app.gateway import ModelGateway

    catalog = {m.id: m.model_dump(mode="json") for m in load_catalog().models}
    handles = {"isnet-imgly-medium": _Handle(pro), "u2netp": _Handle(light),
               "mediapipe-selfie": _Handle(person)}
    served = tuple(ServedModel(m, Tier(catalog[m]["tier"]), 1.0) for m in handles)
    return ModelGateway(handles, catalog, {}, AUTO, auto_models=list(served)), handles


def test_the_gateway_runs_both_candidates_and_survives_one_failing():
    from pipelines.images import DecodedImage
    from serve_app.core.errors import ServiceUnavailable

    yy, xx = np.mgrid[:200, :200]
    soft = np.clip(255 * (60 - np.hypot(yy - 100, xx - 100)) / 10, 0, 255).astype(np.uint8)
    sharp = np.where(np.hypot(yy - 100, xx - 100) < 60, 255, 0).astype(np.uint8)
    image = DecodedImage(np.full((200, 200, 3), 90, np.uint8), None, "png")  # no face

    gateway, handles = _gateway(soft, sharp, np.zeros((200, 200), np.uint8))
    model_id, mask = asyncio.run(gateway.resolve(AUTO, image))
    assert model_id == "u2netp" and np.array_equal(mask, sharp)
    assert len(handles["isnet-imgly-medium"].calls) == 1 == len(handles["u2netp"].calls)

    busy = ServiceUnavailable("Model 'isnet-imgly-medium' is busy; retry shortly.")
    gateway, _ = _gateway(busy, sharp, np.zeros((200, 200), np.uint8))
    assert asyncio.run(gateway.resolve(AUTO, image))[0] == "u2netp"  # the other answer stands

    gateway, _ = _gateway(busy, RuntimeError("light lost"), np.zeros((200, 200), np.uint8))
    with pytest.raises(ServiceUnavailable, match="isnet-imgly-medium"):  # the pro's error
        asyncio.run(gateway.resolve(AUTO, image))

    gateway, handles = _gateway(soft, sharp, np.zeros((200, 200), np.uint8))

    async def cancelled_midway():
        task = asyncio.ensure_future(gateway.resolve(AUTO, image))
        while not handles["u2netp"].calls:  # both candidates asked
            await asyncio.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancelled_midway())
    assert handles["isnet-imgly-medium"].calls[0].cancelled
    assert handles["u2netp"].calls[0].cancelled


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
    from deployments.jobs import JobWorker
    from pipelines.catalog import load_catalog
    from serve_app.core.settings import get_settings

    monkeypatch.setenv("BGR_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("BGR_DATABASE_URL", raising=False)
    get_settings.cache_clear()
    yy, xx = np.mgrid[:200, :200]
    sharp = np.where(np.hypot(yy - 100, xx - 100) < 60, 255, 0).astype(np.uint8)
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
        model_id, mask = workers[0]._auto_image(rgb)
        assert model_id == "u2netp" and np.array_equal(mask, sharp)
        assert workers[0].models["isnet-imgly-medium"].calls[0].cancelled  # type: ignore[attr-defined]
        with pytest.raises(TimeoutError, match="pro timed out"):  # none answered: the first error
            workers[1]._auto_image(rgb)
    finally:
        for w in workers:
            w._stop.set()
        get_settings.cache_clear()
