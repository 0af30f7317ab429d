"""A real two-node Ray cluster on one machine, deployed like KubeRay deploys it.

`ray start --head` offers `cpu_pool` (the CPU worker group's resource), a second `ray start`
process offers `pro_pool` (the GPU group's); `serve deploy` gets the dev overlay's generated
`serveConfigV2` (only the HTTP port and proxy location changed: two nodes share one host here).
The models are the catalog's real ids with stand-in weights (a tiny graph of any input size).
Shown: each pool's replicas run on the node its pool names, one shotgun request uses both,
killing the worker node mid-load gives clear per-model errors (never a hang or a 5xx), and the
pro model serves again once a node offering `pro_pool` is back.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import onnx
import pytest
import yaml
from onnx import TensorProto, helper

from conftest import disk_image, png_bytes
from serve_harness import _free_port

pytestmark = pytest.mark.serve
REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(os.sys.executable).parent / "ray")
SERVE = str(Path(os.sys.executable).parent / "serve")
STAND_INS = {"u2netp": "u2netp.onnx", "mediapipe-selfie": "mediapipe_selfie_segmentation_256x256.onnx",
             "birefnet-general-lite": "birefnet-general-lite.onnx"}


def any_size_model(path: Path) -> None:
    """Foreground = bright pixels, for any N x 3 x H x W input (so any family's preprocessing)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1, "H", "W"])
    nodes = [helper.make_node("ReduceMean", ["x", "axes"], ["m"], keepdims=1),
             helper.make_node("Sigmoid", ["m"], ["y"])]
    graph = helper.make_graph(nodes, "any", [x], [y], initializer=[
        helper.make_tensor("axes", TensorProto.INT64, [1], [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, path)


def generated_serve_config(port: int) -> dict:
    patch = yaml.safe_load((REPO / "k8s/overlays/dev/generated/serve-config-patch.yaml").read_text())
    config = yaml.safe_load(patch[0]["value"])
    config["http_options"]["port"] = port
    config["proxy_location"] = "HeadOnly"  # both "nodes" share this host's ports
    return config


class Node:
    """`ray start --block` in its own process group: killing the group is losing the node."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = open(log, "ab")  # noqa: SIM115 - closed in kill()
        self.proc = subprocess.Popen([RAY, "start", "--block", *args], env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)
        self.log.close()


def stop_cluster(head: Node, worker: Node | None, gcs_port: int) -> None:
    """Kill both nodes and do what `ray stop` would: forget this cluster, so a later
    `ray.init()` or `serve run` does not try to join a dead one."""
    try:
        if worker is not None:
            worker.kill()
    finally:
        head.kill()
    current = Path("/tmp/ray/ray_current_cluster")
    if current.exists() and f":{gcs_port}" in current.read_text():
        current.unlink()


def ray_list(kind: str, gcs: str, env: dict[str, str]) -> list[dict]:
    out = subprocess.run([RAY, "list", kind, "--address", gcs, "--format", "json",
                          "--limit", "10000"], env=env, capture_output=True, text=True,
                         timeout=60, check=True).stdout
    return json.loads(out)


def wait_for(what: str, check, timeout: float, every: float = 1.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
            if result:
                return result
        except (httpx.HTTPError, subprocess.SubprocessError, json.JSONDecodeError, KeyError):
            pass
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(every)


class TwoNodes:
    """A head node (2 CPUs, `cpu_pool`) and a worker node (1 CPU, `pro_pool`) of one Ray
    cluster on this host, each `ray start` in its own process group; `nodes` maps "head" and
    "worker" to their node ids. Leaving the block kills both and forgets the cluster."""

    def __init__(self, tmp_path: Path, head_env: dict[str, str], worker_env: dict[str, str]):
        self.tmp_path, self.head_env, self.worker_env = tmp_path, head_env, worker_env
        self.gcs_port, self.dash_port, self.http_port = _free_port(), _free_port(), _free_port()
        self.gcs = f"127.0.0.1:{self.gcs_port}"
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.head: Node | None = None
        self.worker: Node | None = None
        self.nodes: dict[str, str] = {}

    def __enter__(self) -> TwoNodes:
        self.head = Node(["--head", f"--port={self.gcs_port}", "--node-ip-address=127.0.0.1",
                          f"--dashboard-port={self.dash_port}", "--dashboard-host=127.0.0.1",
                          "--include-dashboard=true", "--num-cpus=2",
                          '--resources={"cpu_pool": 4}'], self.head_env,
                         self.tmp_path / "head.log")
        try:
            wait_for("the head node", lambda: self.list("nodes"), 90)
            self.add_worker("worker.log")
            nodes = wait_for("two nodes", lambda: len(n := self.list("nodes")) == 2 and n, 90)
        except BaseException:
            self.__exit__()
            raise
        self.nodes = {("worker" if "pro_pool" in n["resources_total"] else "head"): n["node_id"]
                      for n in nodes}
        assert set(self.nodes) == {"head", "worker"}, nodes
        return self

    def __exit__(self, *exc) -> None:
        assert self.head is not None
        stop_cluster(self.head, self.worker, self.gcs_port)

    def add_worker(self, log: str) -> None:
        self.worker = Node([f"--address={self.gcs}", "--node-ip-address=127.0.0.1",
                            "--num-cpus=1", '--resources={"pro_pool": 2}'], self.worker_env,
                           self.tmp_path / log)

    def kill_worker(self) -> None:
        assert self.worker is not None
        self.worker.kill()
        self.worker = None

    def list(self, kind: str) -> list[dict]:
        return ray_list(kind, self.gcs, self.head_env)

    def deploy(self, config: dict) -> httpx.Client:
        """`serve deploy` the config through the head's dashboard; a client once healthy."""
        config_path = self.tmp_path / "serve.yaml"
        config_path.write_text(yaml.safe_dump(config))
        subprocess.run([SERVE, "deploy", str(config_path), "--address",
                        f"http://127.0.0.1:{self.dash_port}"], env=self.head_env, check=True,
                       timeout=120, capture_output=True)
        client = httpx.Client(base_url=self.url, timeout=60)
        wait_for("a healthy app", lambda: client.get("/health").json()["status"] == "healthy",
                 240, 2)
        return client

    def placed(self) -> dict[str, str]:
        """Deployment name -> the node id its (live) replica runs on."""
        actors = [a for a in self.list("actors") if a["state"] == "ALIVE"]
        return {a["class_name"].rsplit(":", 1)[-1]: a["node_id"] for a in actors
                if a["class_name"].startswith("ServeReplica:bgremove:")}


def test_two_node_cluster_pins_pools_survives_node_loss_and_recovers(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    for file in STAND_INS.values():
        any_size_model(models / file)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "BGR_MODELS_DIR": str(models),
           "BGR_DATA_DIR": str(tmp_path / "data"), "BGR_AUTH_ENABLED": "false",
           # notice a lost node within seconds, not the default ~30 s
           "RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3",
           "RAY_health_check_initial_delay_ms": "1000"}
    for key in ("RAY_ADDRESS", "BGR_EXTRA_MODELS_DIR", "BGR_CATALOG_PATH"):
        env.pop(key, None)
    with TwoNodes(tmp_path, env, env) as cluster:
        client = cluster.deploy(generated_serve_config(cluster.http_port))
        url = cluster.url

        # each pool's replicas on the node offering its resource
        placed = cluster.placed()
        assert placed["birefnet-general-lite"] == cluster.nodes["worker"]
        for name in ("u2netp", "mediapipe-selfie", "JobWorker", "Ingress"):
            assert placed[name] == cluster.nodes["head"], (name, placed)

        # one shotgun request uses both nodes
        import base64
        body = {"image": base64.b64encode(png_bytes(disk_image(64, 48))).decode(),
                "include_models": ["u2netp", "birefnet-general-lite", "mediapipe-selfie"]}
        rows = client.post("/remove-background", json=body).json()["results"]
        assert [r["status"] for r in rows] == ["success"] * 3

        # lose the worker node under load
        answers: list[tuple[int, dict | None]] = []
        stop = threading.Event()

        def load():
            with httpx.Client(base_url=url, timeout=90) as c:
                while not stop.is_set():
                    r = c.post("/remove-background", json=body)
                    answers.append((r.status_code, r.json() if r.status_code == 200 else r.text))

        threads = [threading.Thread(target=load) for _ in range(2)]
        for t in threads:
            t.start()
        time.sleep(3)
        cluster.kill_worker()
        time.sleep(15)
        stop.set()
        for t in threads:
            t.join(timeout=120)
        assert answers and all(status < 500 for status, _ in answers), [
            a for a in answers if a[0] >= 500][:3]
        rows_after = [{r["model_id"]: r for r in body_["results"]} for status, body_ in answers
                      if status == 200]
        lost = [r["birefnet-general-lite"] for r in rows_after
                if r["birefnet-general-lite"]["status"] == "error"]
        assert lost, "no request saw the pro node gone"
        print("errors seen for the lost pro model:", {r["error"] for r in lost})
        assert all(r["error"] for r in lost)  # a reason in the row, not a hang
        assert all(r["u2netp"]["status"] == "success" for r in rows_after)  # CPU pool unaffected

        # a node offering pro_pool comes back: the pro model serves again
        cluster.add_worker("worker2.log")

        def pro_serves():
            rows = client.post("/remove-background", json=body).json()["results"]
            return all(r["status"] == "success" for r in rows)

        wait_for("the pro model back", pro_serves, 240, 3)


def stand_in_catalog(tmp_path: Path, models: Path) -> Path:
    """The project catalog with the stand-ins' checksums pinned, so the models bucket accepts
    them exactly as it accepts the real files."""
    import hashlib

    data = yaml.safe_load((REPO / "configs" / "models.yaml").read_text())
    for entry in data["models"]:
        if entry["id"] in STAND_INS:
            payload = (models / STAND_INS[entry["id"]]).read_bytes()
            weights = {k: v for k, v in entry["weights"].items() if k not in ("md5", "int8")}
            entry["weights"] = {**weights, "sha256": hashlib.sha256(payload).hexdigest(),
                                "bytes": len(payload)}
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_two_nodes_share_nothing_but_a_bucket_and_a_database(tmp_path, s3_server, postgres_url):
    """No folder in common: each node has its own data and models folders; artifacts and
    weights live in the bucket, jobs in PostgreSQL. An upload through the head node's ingress,
    HD and video jobs processed by the job worker on the other node, results downloaded through
    the head; every model file fetched from the bucket into the node that runs the model."""
    import uuid

    import psycopg
    from s3_server import BUCKET
    from test_video_api import make_clip

    publisher = tmp_path / "publisher-models"
    publisher.mkdir()
    for file in STAND_INS.values():
        any_size_model(publisher / file)
    catalog = stand_in_catalog(tmp_path, publisher)
    run = uuid.uuid4().hex[:8]
    models_url, artifacts_url = f"s3://{BUCKET}/models-{run}", f"s3://{BUCKET}/artifacts-{run}"
    name = f"t_{run}"
    admin = postgres_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    base_env = {**os.environ, **s3_server.app_env(), "RAY_AUTH_MODE": "disabled",
                "BGR_AUTH_ENABLED": "false", "BGR_CATALOG_PATH": str(catalog),
                "BGR_MODELS_URL": models_url, "BGR_ARTIFACTS_URL": artifacts_url,
                "BGR_DATABASE_URL": postgres_url.rsplit("/", 1)[0] + f"/{name}",
                "BGR_JOB_POLL_S": "0.2"}
    for key in ("RAY_ADDRESS", "BGR_EXTRA_MODELS_DIR"):
        base_env.pop(key, None)

    published = subprocess.run(
        [str(Path(os.sys.executable).parent / "bgremove"), "models", "pull", *STAND_INS,
         "--to", models_url], env={**base_env, "BGR_MODELS_DIR": str(publisher)},
        capture_output=True, text=True, timeout=120)
    assert published.returncode == 0, published.stderr
    assert published.stdout.count("published") == 3

    folders = {node: (tmp_path / node / "models", tmp_path / node / "data")
               for node in ("head", "worker")}
    envs = {node: {**base_env, "BGR_MODELS_DIR": str(m), "BGR_DATA_DIR": str(d)}
            for node, (m, d) in folders.items()}
    try:
        with TwoNodes(tmp_path, envs["head"], envs["worker"]) as cluster:
            config = generated_serve_config(cluster.http_port)
            args = config["applications"][0]["args"]
            args["jobs"]["ray_actor_options"] = {"num_cpus": 0.25,
                                                 "resources": {"pro_pool": 0.01}}
            client = cluster.deploy(config)
            placed, node_of = cluster.placed(), cluster.nodes
            assert placed["Ingress"] == node_of["head"] and placed["JobWorker"] == node_of["worker"]
            # every model's file is in the models folder of the node running it, from the bucket
            for model_id, file in STAND_INS.items():
                node = "worker" if placed[model_id] == node_of["worker"] else "head"
                assert (folders[node][0] / file).read_bytes() == (publisher / file).read_bytes()
            assert placed["birefnet-general-lite"] == node_of["worker"]

            # an upload through the head, a /v1 job on the worker node, downloaded through the head
            photo = png_bytes(disk_image(120, 80))
            up = client.post("/api/upload", files={"file": ("me.png", photo, "image/png")})
            assert up.status_code == 201, up.text
            job = client.post("/v1/jobs", json={"upload_id": up.json()["upload_id"]}).json()
            final = wait_for("the /v1 job", lambda: (r := client.get(
                f"/v1/jobs/{job['job_id']}").json())["status"] in ("completed", "failed") and r, 120)
            assert final["status"] == "completed", final
            got = client.get(f"/api/download/{job['job_id']}")
            assert got.status_code == 200 and got.headers["content-type"] == "image/png"
            assert httpx.get(final["output_url"], timeout=30).content == got.content  # presigned
            # an HD image and a video, processed on the worker node, results through the head
            hd = client.post("/image/hd/submit/v1", files={
                "image": ("big.png", png_bytes(disk_image(2100, 1400)), "image/png")}).json()
            hd_result = wait_for("the HD job", lambda: (r := client.get(
                f"/image/hd/result/{hd['uuid']}")).status_code != 202 and r, 120)
            assert hd_result.status_code == 200 and hd_result.content[:8] == b"\x89PNG\r\n\x1a\n"
            clip = client.post("/video/submit/v1",
                               files={"video": ("clip.mp4", make_clip(1.0), "video/mp4")}).json()
            video_result = wait_for("the video job", lambda: (r := client.get(
                f"/video/result/{clip['uuid']}")).status_code != 202 and r, 180)
            assert video_result.status_code == 200, video_result.text
            assert video_result.content[:4] == b"\x1a\x45\xdf\xa3"  # WebM
            # nothing was written to either node's data folder: no shared folder was needed
            for node, (_, data) in folders.items():
                stored = [p for p in data.rglob("*") if p.is_file()] if data.exists() else []
                assert not [p for p in stored if "artifacts" in p.parts or "results" in p.parts], \
                    (node, stored)
            events = client.get(f"/v1/jobs/{job['job_id']}").json()
            assert events["status"] == "completed"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
