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


def test_two_node_cluster_pins_pools_survives_node_loss_and_recovers(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    for file in STAND_INS.values():
        any_size_model(models / file)
    gcs_port, dash_port, http_port = _free_port(), _free_port(), _free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "BGR_MODELS_DIR": str(models),
           "BGR_DATA_DIR": str(tmp_path / "data"), "BGR_AUTH_ENABLED": "false",
           # notice a lost node within seconds, not the default ~30 s
           "RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3",
           "RAY_health_check_initial_delay_ms": "1000"}
    for key in ("RAY_ADDRESS", "BGR_EXTRA_MODELS_DIR", "BGR_CATALOG_PATH"):
        env.pop(key, None)
    gcs = f"127.0.0.1:{gcs_port}"
    head = Node(["--head", f"--port={gcs_port}", "--node-ip-address=127.0.0.1",
                 f"--dashboard-port={dash_port}", "--dashboard-host=127.0.0.1",
                 "--include-dashboard=true", "--num-cpus=2",
                 '--resources={"cpu_pool": 4}'], env, tmp_path / "head.log")
    worker_args = [f"--address={gcs}", "--node-ip-address=127.0.0.1", "--num-cpus=1",
                   '--resources={"pro_pool": 2}']
    worker = None
    url = f"http://127.0.0.1:{http_port}"
    try:
        wait_for("the head node", lambda: ray_list("nodes", gcs, env), 90)
        worker = Node(worker_args, env, tmp_path / "worker.log")
        nodes = wait_for("two nodes", lambda: len(n := ray_list("nodes", gcs, env)) == 2 and n, 90)
        node_of = {("pro_pool" if "pro_pool" in n["resources_total"] else "cpu_pool"): n["node_id"]
                   for n in nodes}
        assert set(node_of) == {"pro_pool", "cpu_pool"}

        config_path = tmp_path / "serve.yaml"
        config_path.write_text(yaml.safe_dump(generated_serve_config(http_port)))
        subprocess.run([SERVE, "deploy", str(config_path), "--address",
                        f"http://127.0.0.1:{dash_port}"], env=env, check=True, timeout=120,
                       capture_output=True)
        client = httpx.Client(base_url=url, timeout=60)
        wait_for("a healthy app", lambda: client.get("/health").json()["status"] == "healthy", 240, 2)

        # each pool's replicas on the node offering its resource
        actors = [a for a in ray_list("actors", gcs, env) if a["state"] == "ALIVE"]
        placed = {a["class_name"].rsplit(":", 1)[-1]: a["node_id"] for a in actors
                  if a["class_name"].startswith("ServeReplica:bgremove:")}
        assert placed["birefnet-general-lite"] == node_of["pro_pool"]
        for name in ("u2netp", "mediapipe-selfie", "JobWorker", "Ingress"):
            assert placed[name] == node_of["cpu_pool"], (name, placed)

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
        worker.kill()
        worker = None
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
        worker = Node(worker_args, env, tmp_path / "worker2.log")

        def pro_serves():
            rows = client.post("/remove-background", json=body).json()["results"]
            return all(r["status"] == "success" for r in rows)

        wait_for("the pro model back", pro_serves, 240, 3)
    finally:
        if worker is not None:
            worker.kill()
        head.kill()
        # what `ray stop` would do: forget this cluster, so a later `ray.init()` or `serve run`
        # does not try to join a dead one
        current = Path("/tmp/ray/ray_current_cluster")
        if current.exists() and f":{gcs_port}" in current.read_text():
            current.unlink()
