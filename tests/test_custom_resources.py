"""Ray custom resources in specs: what Ray is asked for, and that specs without them keep their fingerprints."""

from __future__ import annotations

from llmops_engine.serving.config import AppSettings, ModelRef, Routing, app_config
from llmops_engine.specs.deployment import DeploymentSpec
from llmops_engine.specs.tuning import TuningJobSpec

TUNING = {"base_model": "builtin:tiny-llama", "dataset": "d", "prompt": "p"}
DEPLOYMENT = {"model": "t", "prompt": "p", "gate": None, "auth": "none"}


def test_specs_without_custom_resources_dump_as_before():
    # The dump is what fingerprints are made of: an empty `custom` must not appear in it.
    assert "custom" not in TuningJobSpec.model_validate(TUNING).model_dump()["resources"]
    assert "resources" not in DeploymentSpec.model_validate(DEPLOYMENT).model_dump()
    asked = TuningJobSpec.model_validate({**TUNING, "resources": {"custom": {"trainer_node": 1}}})
    assert asked.model_dump()["resources"]["custom"] == {"trainer_node": 1}


def _slots(spec: DeploymentSpec) -> dict:
    settings = AppSettings(name="api", route_prefix=None, spec=spec.model_dump(mode="json"), key_hashes=None,
                           log_path="/tmp/x.log")
    model = ModelRef(version="v1", fingerprint="f" * 64, path="/models/v1")
    routing = Routing().with_model("blue", model)
    return {d["name"]: d for d in app_config(settings, routing)["deployments"]}


def test_a_replicas_custom_resources_reach_its_actor_options():
    placed = _slots(DeploymentSpec.model_validate({**DEPLOYMENT, "resources": {"custom": {"serve_node": 0.5}}}))
    assert placed["blue"]["ray_actor_options"] == {"num_cpus": 0.5, "resources": {"serve_node": 0.5}}
    assert placed["green"]["ray_actor_options"]["resources"] == {"serve_node": 0.5}
    assert "resources" not in placed["ingress"]["ray_actor_options"]  # the ingress holds no model
    plain = _slots(DeploymentSpec.model_validate(DEPLOYMENT))
    assert plain["blue"]["ray_actor_options"] == {"num_cpus": 0.5}  # unchanged: live apps are not redeployed
