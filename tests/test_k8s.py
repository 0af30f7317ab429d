"""The Kubernetes manifests: generated parts up to date, every overlay renders (kustomize, via
kubectl) and parses, the RayService carries exactly the project's Serve config, and every pool
of that config is pinned to a worker group that offers what it asks for."""

from __future__ import annotations

import json
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from serve_app.k8s import TARGETS, models_to_pull, render

REPO = Path(__file__).resolve().parents[1]
OVERLAYS = {"prod": "configs/cluster.yaml", "dev": "configs/cluster-dev.yaml"}
needs_kubectl = pytest.mark.skipif(shutil.which("kubectl") is None,
                                   reason="kubectl (its built-in kustomize) is not installed")


def test_generated_files_are_up_to_date():
    for rel, text in render(REPO).items():
        assert (REPO / rel).read_text() == text, f"{rel} is stale: run `bgremove k8s render`"
    assert {folder for _, folder in TARGETS} == {"k8s/base/generated",
                                                 "k8s/overlays/dev/generated"}


def rendered(overlay: str) -> list[dict]:
    out = subprocess.run(["kubectl", "kustomize", str(REPO / "k8s" / "overlays" / overlay)],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def group_resources(group: dict) -> set[str]:
    raw = group["rayStartParams"].get("resources", '"{}"')
    return set(json.loads(json.loads(raw)))  # KubeRay's doubly quoted JSON


@needs_kubectl
@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_overlay_renders_with_the_projects_serve_config(overlay):
    docs = rendered(overlay)
    kinds = {d["kind"] for d in docs}
    assert kinds == {"RayService", "ConfigMap", "PersistentVolumeClaim"}  # no Secret, ever
    maps = {d["metadata"]["name"]: d["data"] for d in docs if d["kind"] == "ConfigMap"}
    assert set(maps) == {"bgremove-settings", "bgremove-models"}
    assert not any("DATABASE_URL" in key for key in maps["bgremove-settings"])
    (service,) = [d for d in docs if d["kind"] == "RayService"]
    assert service["apiVersion"] == "ray.io/v1"
    serve_config = yaml.safe_load(service["spec"]["serveConfigV2"])
    assert serve_config == yaml.safe_load((REPO / OVERLAYS[overlay]).read_text())

    cluster = service["spec"]["rayClusterConfig"]
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    offered = {name: group_resources(g) for name, g in groups.items()}
    gpus = {name: g["template"]["spec"]["containers"][0]["resources"]["limits"]
            .get("nvidia.com/gpu", 0) for name, g in groups.items()}
    assert gpus["cpu"] == 0 and gpus["gpu"] == (1 if overlay == "prod" else 0)
    args = serve_config["applications"][0]["args"]
    placements = [p["ray_actor_options"] for p in args["pools"].values()]
    placements += [args["jobs"]["ray_actor_options"], args["ingress"]["ray_actor_options"]]
    for opts in placements:  # every pinned deployment has a group offering its resource
        for resource in opts.get("resources", {}):
            hosts = [n for n, r in offered.items() if resource in r]
            assert len(hosts) == 1, (resource, offered)
            if opts.get("num_gpus"):
                assert gpus[hosts[0]] >= opts["num_gpus"]

    pods = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in groups.values()]
    for pod in pods:
        spec = pod["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        container = spec["containers"][0]
        # KubeRay's own probes: a /health probe would deadlock (the app is deployed only once
        # the head is ready)
        assert "readinessProbe" not in container
        env_from = {next(iter(e.values()))["name"] for e in container["envFrom"]}
        assert env_from == {"bgremove-settings", "bgremove-secrets"}  # same names as rendered
        mounts = {m["mountPath"]: m.get("readOnly", False) for m in container["volumeMounts"]}
        assert mounts == {"/models": True, "/data": False}

    # the weights are pulled once, by the head's init container, into the shared volume
    owner, init = cluster["headGroupSpec"]["template"]["spec"]["initContainers"]
    assert owner["command"] == ["chown", "1000:1000", "/models", "/data"]  # RWX ignores fsGroup
    assert "bgremove models pull $BGR_PULL_MODELS &&" in " ".join(init["command"])
    assert maps["bgremove-models"]["BGR_PULL_MODELS"].split() == models_to_pull(serve_config)
    assert maps["bgremove-models"]["BGR_PULL_OPTIONAL"].split() == models_to_pull(
        serve_config, "optional_models")
    images = {c["image"] for pod in pods for c in pod["spec"]["containers"]}
    if overlay == "prod":  # each variant pinned to a version
        assert images == {"registry.example.com/bgremove-cpu:0.1.0",
                          "registry.example.com/bgremove-gpu:0.1.0"}
    assert {e["configMapRef"]["name"] for e in init["envFrom"]} == set(maps)


@needs_kubectl
def test_bucket_overlay_has_no_shared_volume():
    """k8s/overlays/bucket: artifacts and models in buckets, no PersistentVolumeClaim at all,
    every pod's /models a writable emptyDir (the node-local cache), the models published once
    by a Job that runs the same pull command with --to."""
    docs = rendered("bucket")
    assert {d["kind"] for d in docs} == {"RayService", "ConfigMap", "Job"}  # no PVC, no Secret
    maps = {d["metadata"]["name"]: d["data"] for d in docs if d["kind"] == "ConfigMap"}
    settings = maps["bgremove-settings"]
    assert settings["BGR_ARTIFACTS_URL"].startswith("s3://")
    assert settings["BGR_MODELS_URL"].startswith("s3://")
    assert not any("SECRET" in k or "DATABASE_URL" in k for k in settings)
    from serve_app.core.artifacts import artifact_store
    from serve_app.core.s3_artifacts import S3ArtifactStore
    from serve_app.core.settings import Settings
    parsed = Settings(**{k.removeprefix("BGR_").lower(): v for k, v in settings.items()})
    assert isinstance(artifact_store(parsed), S3ArtifactStore)  # the settings parse as a bucket
    (service,) = [d for d in docs if d["kind"] == "RayService"]
    assert yaml.safe_load(service["spec"]["serveConfigV2"]) == yaml.safe_load(
        (REPO / "configs/cluster.yaml").read_text())
    cluster = service["spec"]["rayClusterConfig"]
    pods = [cluster["headGroupSpec"]["template"]] + [
        g["template"] for g in cluster["workerGroupSpecs"]]
    for pod in pods:
        spec = pod["spec"]
        assert "initContainers" not in spec
        assert all("emptyDir" in v and "persistentVolumeClaim" not in v for v in spec["volumes"])
        mounts = {m["mountPath"]: m.get("readOnly", False)
                  for m in spec["containers"][0]["volumeMounts"]}
        assert mounts == {"/models": False, "/data": False}
        env_from = {next(iter(e.values()))["name"] for e in spec["containers"][0]["envFrom"]}
        assert env_from == {"bgremove-settings", "bgremove-secrets"}
    (job,) = [d for d in docs if d["kind"] == "Job"]
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert 'bgremove models pull $BGR_PULL_MODELS --to "$BGR_MODELS_URL"' in container["command"][-1]
    assert {next(iter(e.values()))["name"] for e in container["envFrom"]} == {
        "bgremove-models", "bgremove-settings", "bgremove-secrets"}
    assert maps["bgremove-models"]["BGR_PULL_MODELS"].split() == models_to_pull(
        yaml.safe_load(service["spec"]["serveConfigV2"]))


def test_dockerfile_builds_both_variants_as_a_non_root_user():
    """What the manifests rely on (no image build here: no registry access)."""
    text = (REPO / "Dockerfile").read_text()
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert {"cpu", "gpu", "postgres", "ai", "ai-cpu"} <= set(extras)
    assert 'pip install -e ".[${VARIANT},postgres${EXTRAS}]"' in text and "ARG VARIANT=cpu" in text
    assert 'python -c "import rembg' in text  # numba compiled at build time, not per replica
    assert "USER 1000" in text and "--uid 1000" in text
    assert "/usr/local/bin/" in text  # ray/serve on PATH for KubeRay's `bash -lc` starts
    cluster = yaml.safe_load((REPO / "k8s/base/rayservice.yaml").read_text())[
        "spec"]["rayClusterConfig"]
    pods = [cluster["headGroupSpec"]] + cluster["workerGroupSpecs"]
    assert all(p["template"]["spec"]["securityContext"]["runAsUser"] == 1000 for p in pods)
    root = [c["name"] for p in pods for c in p["template"]["spec"].get("initContainers", [])
            + p["template"]["spec"]["containers"]
            if c.get("securityContext", {}).get("runAsUser") == 0]
    assert root == ["own-volumes"]  # only the chown of the shared volumes runs as root
