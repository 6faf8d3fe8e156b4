"""`llmops export kuberay`: every manifest is checked against KubeRay's own CRD schema (tests/data/
kuberay-crds), and the RayService's Serve config against what apply deploys (the same config functions).

The project is applied for real through the engine onto an S3 store (moto's server), with recording
controllers: the Deployment's records what the real controller records (`served`), which is what
the export reads."""

import hashlib
import json
import subprocess
import sys
from dataclasses import replace
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft7Validator
from typer.testing import CliRunner

from llmops_engine.cli import app
from llmops_engine.controllers import Registry
from llmops_engine.project import load_project
from llmops_engine.serving.config import ModelRef, Routing, app_config, gateway_config, gateway_entry
from llmops_engine.serving.deploy import app_settings
from tests import recording_controllers
from tests.plugins.s3_server import SECRET as STORE_SECRET

CRDS = Path(__file__).parent / "data" / "kuberay-crds"
SCHEMAS = {kind: json.loads((CRDS / f"{kind.lower()}.v1.schema.json").read_text()) for kind in ("RayService", "RayJob")}
API_KEY = "sk-live-never-in-a-manifest-91c2"
REPO_URI = "s3://ci-bucket/llmops-repo.zip"
HEAVY = ("torch", "ray", "transformers", "great_expectations", "dvc", "pandas")

SPECS = {
    "prompt.yaml": """
        apiVersion: llmops/v1
        kind: Prompt
        metadata: {name: p}
        spec: {template: "Q: {instruction}"}
        """,
    "data.yaml": """
        apiVersion: llmops/v1
        kind: Dataset
        metadata: {name: d}
        spec:
          source: {path: data/x.jsonl}
          columns: {instruction: q, output: a}
        """,
    "jobs.yaml": """
        apiVersion: llmops/v1
        kind: TuningJob
        metadata: {name: t}
        spec:
          base_model: "builtin:tiny-llama"
          dataset: d
          prompt: p
          resources: {workers: 2, cpus_per_worker: 2, gpus_per_worker: 1, custom: {trainer: 1}}
        ---
        apiVersion: llmops/v1
        kind: TuningJob
        metadata: {name: small}
        spec: {base_model: "builtin:tiny-llama", dataset: d, prompt: p, resources: {cpus_per_worker: 0.5}}
        """,
    "serve.yaml": """
        apiVersion: llmops/v1
        kind: Deployment
        metadata: {name: api}
        spec:
          model: t
          prompt: p
          gate: null
          auth: {api_keys_env: LLMOPS_TEST_API_KEYS}
          replicas: {min: 1, max: 3}
        ---
        apiVersion: llmops/v1
        kind: Deployment
        metadata: {name: open}
        spec: {model: small, prompt: p, gate: null, auth: none}
        """,
}


class ServedRecording(recording_controllers.RecordingController):
    """Records what the real Deployment controller records of the version it made live (for the
    Deployments in `base`, a base model as it is, as apply serves a `model: builtin:…`)."""

    def __init__(self, kind, base=()):
        super().__init__(kind)
        self.base = base

    def apply(self, resource, ctx, staging):
        outputs = super().apply(resource, ctx, staging)
        if resource.name in self.base:
            served = {"version": "0123456789ab", "fingerprint": "0123456789ab" * 4, "base": "builtin:tiny-llama",
                      "store_root": str(ctx.store.root)}
            return {**outputs, "served": served, "guardrail_policies": []}
        key = f"TuningJob/{resource.spec.model}"
        fingerprint = ctx.fingerprint(key)
        served = ModelRef(version=fingerprint[:12], fingerprint=fingerprint, path=str(ctx.artifact_dir(key)),
                          store_url=ctx.store.url).to_json()
        del served["fault_error_rate"]
        return {**outputs, "served": served, "guardrail_policies": []}


def invoke(*args, registry=None):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False, obj=registry)


def apply_project(make_project, store, serves_base=()):
    root = make_project(SPECS, settings=f"spec_dirs: [specs]\nartifact_store: {store}\n")
    (root / "data").mkdir()
    (root / "data" / "x.jsonl").write_text('{"q": "1", "a": "2"}\n')
    recorders = {kind: recording_controllers.RecordingController(kind) for kind in ("Prompt", "Dataset", "TuningJob")}
    registry = Registry(recorders | {"Deployment": ServedRecording("Deployment", serves_base)})
    result = invoke("apply", "-C", root, registry=registry)
    assert result.exit_code == 0, result.output
    return root


@pytest.fixture
def applied(make_project, s3_store, monkeypatch):
    """A project applied onto an S3 store; returns its root."""
    monkeypatch.setenv("LLMOPS_TEST_API_KEYS", API_KEY)
    return apply_project(make_project, s3_store)


@pytest.fixture
def exported(applied, tmp_path):
    out = tmp_path / "manifests"
    result = invoke("export", "kuberay", "-C", applied, "--out", out, "--repo-uri", REPO_URI)
    assert result.exit_code == 0, result.output
    return {path.name: yaml.safe_load(path.read_text()) for path in out.iterdir()}


def schema_errors(manifest):
    return [error.message for error in Draft7Validator(SCHEMAS[manifest["kind"]]).iter_errors(manifest)]


def serve_config(manifests):
    return yaml.safe_load(manifests["rayservice.yaml"]["spec"]["serveConfigV2"])


def test_every_manifest_is_valid_for_its_crd(exported):
    assert sorted(exported) == ["rayjob-small.yaml", "rayjob-t.yaml", "rayservice.yaml"]
    for name, manifest in exported.items():
        assert manifest["apiVersion"] == "ray.io/v1"
        assert schema_errors(manifest) == [], name


@pytest.mark.parametrize("file,path,wrong", [
    ("rayservice.yaml", ["spec", "rayClusterConfig", "workerGroupSpecs", 0, "minReplicas"], "one"),
    ("rayservice.yaml", ["spec", "serveConfigV2"], {"applications": []}),
    ("rayjob-t.yaml", ["spec", "shutdownAfterJobFinishes"], "yes"),
    ("rayjob-t.yaml", ["spec", "rayClusterSpec", "workerGroupSpecs", 0, "template", "spec", "containers", 0,
                       "resources", "limits", "cpu"], "two cores"),
])
def test_the_schema_rejects_a_wrong_field(exported, file, path, wrong):
    manifest = exported[file]
    *parents, last = path
    node = manifest
    for step in parents:
        node = node[step]
    node[last] = wrong
    assert schema_errors(manifest)


def test_serve_config_is_what_apply_deploys(applied, exported):
    """Built by the config functions apply uses, from what the records say is live; only the
    runtime env (the engine, the store) and the pods' log paths are the cluster's."""
    project = load_project(applied)
    config = serve_config(exported)
    by_name = {a["name"]: a for a in config["applications"]}
    assert list(by_name) == ["llmops-gateway", "api", "open"]
    records = records_by_name(applied)
    entries = {}
    for name in ("api", "open"):
        spec = records[name].spec
        settings = replace(app_settings(project, name, spec, []), log_path=f"/tmp/llmops/requests/{name}.jsonl")
        live = ModelRef(**records[name].outputs["served"])
        expected = app_config(settings, Routing().with_model("blue", live))
        assert without_runtime_env(by_name[name]) == without_runtime_env(expected)
        entries[name] = gateway_entry(settings, live.version)
    gateway = gateway_config(entries, "/tmp/llmops/requests/llmops-gateway.jsonl")
    assert without_runtime_env(by_name["llmops-gateway"]) == without_runtime_env(gateway)

    # And concretely: the hashed key, the autoscaling, the model the slot fetches from the store.
    ingress, blue, green = by_name["api"]["deployments"]
    assert ingress["user_config"]["api_key_sha256"] == [hashlib.sha256(API_KEY.encode()).hexdigest()]
    assert blue["autoscaling_config"]["min_replicas"] == 1 and blue["autoscaling_config"]["max_replicas"] == 3
    model = blue["user_config"]["model"]
    assert model["fingerprint"] == records["t"].fingerprint and model["store_url"].startswith("s3://")
    assert green["user_config"]["model"] is None
    assert by_name["open"]["deployments"][0]["user_config"]["api_key_sha256"] is None


@pytest.mark.slow  # imports Ray (no cluster)
def test_ray_serve_accepts_the_serve_config(exported):
    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema  # Serve's own schema of what KubeRay hands it

    config = serve_config(exported)
    assert [app.name for app in ServeDeploySchema.model_validate(config).applications] == ["llmops-gateway", "api", "open"]
    config["applications"][1]["runtime_env"] = "pip: llmops-engine"
    with pytest.raises(ValidationError):
        ServeDeploySchema.model_validate(config)


def records_by_name(root):
    from llmops_engine.state.stores import open_store

    return {record.name: record for record in open_store(load_project(root)).read_records().values()}


def without_runtime_env(app_entry):
    return {k: v for k, v in app_entry.items() if k != "runtime_env"}


def test_runtime_env_names_the_engine_and_the_store(exported, s3_store):
    pip = [f"llmops-engine=={version('llmops-engine')}"]
    for application in serve_config(exported)["applications"]:
        env = application["runtime_env"]
        assert env["pip"] == pip
        assert env["env_vars"]["LLMOPS_ARTIFACT_STORE"] == s3_store and env["env_vars"]["HF_HUB_OFFLINE"] == "1"
    job_env = yaml.safe_load(exported["rayjob-t.yaml"]["spec"]["runtimeEnvYAML"])
    assert job_env["working_dir"] == REPO_URI and job_env["pip"] == pip
    assert job_env["env_vars"]["LLMOPS_ARTIFACT_STORE"] == s3_store


def test_a_rayjob_trains_its_tuning_job_on_the_resources_it_asks_for(exported):
    job = exported["rayjob-t.yaml"]["spec"]
    assert job["entrypoint"] == "llmops apply --target TuningJob/t"
    assert job["shutdownAfterJobFinishes"] is True
    (group,) = job["rayClusterSpec"]["workerGroupSpecs"]
    assert (group["replicas"], group["minReplicas"], group["maxReplicas"]) == (2, 2, 2)
    assert group["resources"] == {"trainer": "1"}
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits == {"cpu": "2", "memory": "8Gi", "nvidia.com/gpu": "1"}
    (small,) = exported["rayjob-small.yaml"]["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert small["template"]["spec"]["containers"][0]["resources"]["limits"] == {"cpu": "0.5", "memory": "4Gi"}
    assert "resources" not in small


def test_pods_run_the_ray_of_this_machine_unless_told_and_name_no_registry(applied, exported, tmp_path):
    ray = version("ray")
    for manifest in exported.values():
        cluster = manifest["spec"].get("rayClusterConfig") or manifest["spec"]["rayClusterSpec"]
        groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
        # No registry host in the name: the cluster resolves it with its own settings.
        assert {c["image"] for g in groups for c in g["template"]["spec"]["containers"]} == {f"rayproject/ray:{ray}-py311"}
    out = tmp_path / "own-image"
    assert invoke("export", "kuberay", "-C", applied, "--out", out, "--image", "ray-ml:custom").exit_code == 0
    cluster = yaml.safe_load((out / "rayservice.yaml").read_text())["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == ray
    assert cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["image"] == "ray-ml:custom"


def test_no_secret_is_written(applied, tmp_path):
    out = tmp_path / "manifests"
    assert invoke("export", "kuberay", "-C", applied, "--out", out, "--repo-uri", REPO_URI).exit_code == 0
    text = "".join(path.read_text() for path in out.iterdir())
    assert hashlib.sha256(API_KEY.encode()).hexdigest() in text  # the key is there, as apply puts it: hashed
    assert API_KEY not in text and STORE_SECRET not in text
    assert "secretRef" in text  # the store's credentials: a Secret the pods reference by name


def test_without_a_repo_uri_only_the_rayservice_is_written_and_the_command_says_why(applied, tmp_path):
    out = tmp_path / "manifests"
    result = invoke("export", "kuberay", "-C", applied, "--out", out)
    assert result.exit_code == 0, result.output
    assert [p.name for p in out.iterdir()] == ["rayservice.yaml"]
    assert "no RayJob written: pass --repo-uri" in result.output


@pytest.mark.parametrize("uri", ["llmops-repo.zip", "s3://bucket/repo", "https://example.com/repo.tar.gz"])
def test_a_repo_uri_that_is_not_a_fetchable_zip_is_refused(applied, tmp_path, uri):
    result = invoke("export", "kuberay", "-C", applied, "--out", tmp_path / "m", "--repo-uri", uri)
    assert result.exit_code == 1 and "must be a URI of a zip archive" in result.output
    assert not (tmp_path / "m").exists()


def test_a_local_store_is_a_clear_error(project_root, tmp_path, monkeypatch):
    monkeypatch.delenv("LLMOPS_ARTIFACT_STORE", raising=False)
    result = invoke("export", "kuberay", "-C", project_root, "--out", tmp_path / "m")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "the artifact store is a local directory" in result.output and "artifact_store: s3://" in result.output
    assert not (tmp_path / "m").exists()


def test_a_deployment_not_applied_at_its_spec_is_a_clear_error(applied, tmp_path):
    serve = applied / "specs" / "serve.yaml"
    serve.write_text(serve.read_text().replace("max: 3", "max: 4"))
    result = invoke("export", "kuberay", "-C", applied, "--out", tmp_path / "m")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "Deployment/api not applied at the current spec; run `llmops apply` first" in result.output


def test_a_deployment_of_a_base_model_is_refused(make_project, s3_store, monkeypatch, tmp_path):
    monkeypatch.setenv("LLMOPS_TEST_API_KEYS", API_KEY)
    root = apply_project(make_project, s3_store, serves_base=("open",))
    result = invoke("export", "kuberay", "-C", root, "--out", tmp_path / "m")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "Deployment/open serves base model builtin:tiny-llama, which only `llmops apply` can serve" in result.output
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("command", [["export", "kuberay", "--help"], ["export", "kuberay", "--out", "manifests"]])
def test_export_imports_nothing_heavy(applied, command):
    probe = (
        "import sys, runpy\n"
        f"sys.argv = ['llmops', *{command!r}]\n"
        "code = 0\n"
        "try:\n    runpy.run_module('llmops_engine', run_name='__main__')\n"
        "except SystemExit as done:\n    code = done.code\n"
        f"print('HEAVY', [m for m in {HEAVY!r} if m in sys.modules])\n"
        "sys.exit(code)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=applied, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "HEAVY []" in result.stdout, result.stdout + result.stderr


def test_an_out_folder_that_cannot_be_written_is_a_clear_error(applied, tmp_path):
    taken = tmp_path / "a-file"
    taken.write_text("not a folder")
    result = invoke("export", "kuberay", "-C", applied, "--out", taken)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"cannot write the manifests into {taken}" in result.output
