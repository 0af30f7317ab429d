"""App config validation and pool option merging (no Ray cluster needed)."""

import pytest
from pydantic import ValidationError

from pipelines.catalog import Tier
from serve_app.builder import AppConfig, PoolOptions, check_resources
from serve_app.config import IngressSetup

from conftest import REPO


def test_tier_defaults_pool_overrides_and_model_overrides_merge_in_order():
    config = AppConfig.model_validate({
        "models": ["u2netp", "birefnet-general"],
        "pools": {"light": {"ray_actor_options": {"num_cpus": 0.5}, "max_ongoing_requests": 40}},
        "model_overrides": {"u2netp": {"num_replicas": 3}},
    })
    light = config.pool_for("u2netp", Tier.light)
    assert light.num_replicas == 3 and light.max_ongoing_requests == 40
    assert light.ray_actor_options == {"num_cpus": 0.5}
    pro = config.pool_for("birefnet-general", Tier.pro)
    assert pro.ray_actor_options["num_gpus"] == 1
    assert pro.providers[0] == "CUDAExecutionProvider"
    assert pro.batch.max_batch_size == 8
    opts = pro.serve_options()
    assert opts["user_config"] == {"batch": {"max_batch_size": 8, "batch_wait_timeout_s": 0.01}}
    assert opts["num_replicas"] == 1 and "autoscaling_config" not in opts
    # what each replica is constructed with (SegmentationModel's keyword arguments)
    assert pro.backend_options() == {
        "providers": ["CUDAExecutionProvider", "CPUExecutionProvider"], "intra_op_threads": 0,
        "concurrent_inferences": 1, "solo_intra_op_threads": 0, "precision": "auto",
        "cpu_memory_arena": True, "input_size": None}
    fp16 = AppConfig.model_validate({"models": ["u2netp"], "pools": {"light": {"precision": "fp16"}}})
    assert fp16.pool_for("u2netp", Tier.light).backend_options()["precision"] == "fp16"
    smaller = AppConfig.model_validate({"models": ["u2netp"], "pools": {"light": {"input_size": 256}}})
    assert smaller.pool_for("u2netp", Tier.light).backend_options()["input_size"] == 256
    with pytest.raises(ValueError):
        PoolOptions(input_size=8)


def test_autoscaling_replaces_fixed_replicas():
    pool = PoolOptions(autoscaling_config={"min_replicas": 2, "max_replicas": 5})
    assert "num_replicas" not in pool.serve_options() and pool.min_replicas() == 2


@pytest.mark.parametrize("args, message", [
    ({"models": []}, "at least 1"),
    ({"models": ["u2netp", "u2netp"]}, "duplicate"),
    ({"models": ["u2netp"], "default_model": "u2net"}, "nor in models"),
    ({"models": ["u2netp"], "model_overrides": {"u2net": {}}}, "not deployed"),
    ({"models": ["u2netp"], "colour": "red"}, "Extra inputs"),
])
def test_bad_app_configs_are_refused_before_deploying(args, message):
    with pytest.raises(ValidationError, match=message):
        AppConfig.model_validate(args)


def test_batch_larger_than_concurrency_is_refused():
    with pytest.raises(ValidationError, match="max_ongoing_requests"):
        PoolOptions(max_ongoing_requests=4, batch={"max_batch_size": 8})


def test_check_resources_names_what_cannot_be_placed(monkeypatch):
    nodes = [{"Alive": True, "Resources": {"CPU": 2.0, "memory": 1e9}}]
    monkeypatch.setattr("ray.nodes", lambda: nodes)
    check_resources({"u2netp": ({"num_cpus": 0.5}, 2), "Ingress": ({"num_cpus": 0.5}, 1)})
    with pytest.raises(ValueError, match=r"'big' needs .*GPU.* no node has that"):
        check_resources({"big": ({"num_cpus": 1, "num_gpus": 1}, 1)})
    with pytest.raises(ValueError, match="CPU=3 in total"):
        check_resources({"a": ({"num_cpus": 1}, 3)})


def test_check_resources_honours_label_selectors(monkeypatch):
    nodes = [{"Alive": True, "Resources": {"CPU": 4.0}, "Labels": {"pool": "light"}},
             {"Alive": True, "Resources": {"CPU": 4.0, "GPU": 1.0},
              "Labels": {"pool": "pro", "ray.io/accelerator-type": "H100"}}]
    monkeypatch.setattr("ray.nodes", lambda: nodes)
    check_resources({"pro": ({"num_gpus": 1, "label_selector": {"pool": "pro"}}, 1),
                     "light": ({"num_cpus": 1, "label_selector": {"pool": "!pro"}}, 1),
                     "any": ({"num_cpus": 1, "label_selector": {"pool": "in(light,pro)"}}, 1)})
    with pytest.raises(ValueError, match=r"'gpu-on-light' needs .* labelled"):
        check_resources({"gpu-on-light": ({"num_gpus": 1, "label_selector": {"pool": "light"}}, 1)})
    with pytest.raises(ValueError, match="no node has that"):
        check_resources({"a100": ({"label_selector": {"ray.io/accelerator-type": "A100"}}, 1)})


def test_optional_models_share_the_uniqueness_check():
    config = AppConfig.model_validate({"models": ["u2netp"], "optional_models": ["sinet-portrait"],
                                       "model_overrides": {"sinet-portrait": {"num_replicas": 2}}})
    assert config.optional_models == ["sinet-portrait"]
    with pytest.raises(ValidationError, match="duplicate"):
        AppConfig.model_validate({"models": ["u2netp"], "optional_models": ["u2netp"]})


def test_local_config_fits_a_two_core_machine():
    """`make run` on the smallest machine we support (2 cores): every replica local.yaml can
    start, optional models and the prompt model included, books at most 2 logical CPUs.
    Otherwise Serve waits forever for a replica it cannot place (the app stays DEPLOYING)."""
    import yaml

    from pipelines.catalog import load_catalog

    app = yaml.safe_load((REPO / "configs" / "local.yaml").read_text())["applications"][0]
    config = AppConfig.model_validate(app["args"])
    catalog = load_catalog()
    booked = 0.0
    for model_id in config.models + config.optional_models:
        pool = config.pool_for(model_id, catalog.get(model_id).tier)
        booked += pool.ray_actor_options.get("num_cpus", 1) * pool.min_replicas()
    replicas = config.ingress.num_replicas if isinstance(config.ingress.num_replicas, int) else 1
    booked += config.ingress.ray_actor_options.get("num_cpus", 1) * replicas
    booked += config.jobs.ray_actor_options.get("num_cpus", 1) * config.jobs.num_replicas
    for optional in (config.prompt, config.detector):
        if optional.enabled:
            booked += optional.ray_actor_options.get("num_cpus", 1) * optional.num_replicas
    for extra in (config.text_prompt, config.generate):
        if extra.model_dir:
            booked += extra.ray_actor_options.get("num_cpus", 1) * extra.num_replicas
    assert booked <= 2.0, f"local.yaml books {booked:g} CPUs"


def test_copyleft_weights_are_served_only_when_their_licence_is_accepted(tmp_path, monkeypatch):
    """An installed AGPL-3.0 model is withheld (with the reason, for /models) unless the Serve
    config names that licence; permissive models never need accepting."""
    from pipelines.catalog import load_catalog
    from serve_app.builder import build_app, license_refusal
    from serve_app.core.settings import get_settings

    catalog = load_catalog()
    agpl, mit = catalog.get("isnet-imgly-small"), catalog.get("birefnet-general")
    assert agpl.weights.license_terms == "copyleft" and mit.weights.license_terms == "permissive"
    reason = license_refusal(agpl, [])
    assert reason is not None and "AGPL-3.0" in reason and "accept_licenses" in reason
    assert license_refusal(agpl, ["AGPL-3.0"]) is None and license_refusal(mit, []) is None

    (tmp_path / "u2netp.onnx").write_bytes(b"x")  # only looked up, never loaded by the builder
    (tmp_path / agpl.weights.file).write_bytes(b"x")
    monkeypatch.setenv("BGR_EXTRA_MODELS_DIR", str(tmp_path))
    monkeypatch.setenv("BGR_MODELS_DIR", str(tmp_path))
    get_settings.cache_clear()
    try:
        def ingress_setup(accept: list[str]) -> IngressSetup:
            app = build_app({"models": ["u2netp"], "optional_models": ["isnet-imgly-small"],
                             "accept_licenses": accept, "validate_resources": False,
                             "jobs": {"num_replicas": 0}})
            return IngressSetup.model_validate(app._bound_deployment.init_args[3])

        withheld = ingress_setup([])
        assert "isnet-imgly-small" in withheld.withheld
        assert "isnet-imgly-small" not in withheld.model_pools
        served = ingress_setup(["AGPL-3.0"])
        assert served.withheld == {} and served.tier_models["pro"] == "isnet-imgly-small"
    finally:
        get_settings.cache_clear()
