"""`llmops export kuberay`: the project as KubeRay manifests, for users who run Ray on Kubernetes.

It writes a RayService that serves what `llmops apply` made live, and one RayJob per TuningJob
that runs `llmops apply --target TuningJob/<name>` on a cluster of its own. The RayService's
`serveConfigV2` is built by the same pure functions apply deploys with (serving/config.py,
`serving.deploy.app_settings`), from each Deployment's record: its blue slot holds the model
version apply last made live, so a Deployment must be applied at its current spec first. Only
the request-log paths differ (the pods' own, not this machine's).

Pods reach models and records through the artifact store, so the store must be an object store
(a local directory is refused). Nothing secret is written: API keys appear only as the SHA-256
hashes apply puts in user_config, and the store's credentials come from a Kubernetes Secret the
pods reference by name. Import-light (no Ray): the manifests are dicts made by pure functions;
`export_kuberay` loads the project like `plan` and writes only the output directory.
"""

from __future__ import annotations

import math
import re
import shlex
from dataclasses import dataclass, replace
from importlib.metadata import version
from pathlib import Path
from typing import Any

import yaml

from .errors import ManifestError
from .observe import Desired, load_desired
from .project import Project
from .serving.config import (
    GATEWAY_APP, OFFLINE_ENV, SLOTS, ModelRef, Routing, app_config, gateway_config, gateway_entry,
)
from .serving.deploy import app_settings
from .specs.tuning import Resources
from .state.records import ResourceRecord
from .state.stores import is_local_url, open_store

API_VERSION = "ray.io/v1"
ENGINE_DISTRIBUTION = "llmops-engine"
POD_LOG_DIR = "/tmp/llmops/requests"  # writable in any image; `llmops logs` reads this machine's only
STORE_SECRET = "llmops-store"  # holds the store's credentials (e.g. AWS_ACCESS_KEY_ID), made with kubectl
HEAD_RESOURCES = {"cpu": "2", "memory": "8Gi"}
SERVE_WORKER_CPUS = 4
MEMORY_GI_PER_CPU = 4


@dataclass(frozen=True)
class Export:
    """What `export_kuberay` wrote, and why it left something out."""

    written: list[Path]
    notes: list[str]


def export_kuberay(project: Project, out: Path, image: str | None = None, repo_uri: str | None = None) -> Export:
    """Write rayservice.yaml (when there are Deployments) and rayjob-<name>.yaml per TuningJob
    (when `repo_uri` says where the cluster fetches the repository) into `out`."""
    store_url = cluster_store_url(project)
    if repo_uri is not None:
        check_repo_uri(repo_uri)
    desired = load_desired(project, query_databases=False)
    records = open_store(project).read_records()
    manifests, notes = project_manifests(project, desired, records, store_url, image or default_image(), repo_uri)
    try:
        out.mkdir(parents=True, exist_ok=True)
        for filename, manifest in manifests.items():
            (out / filename).write_text(to_yaml(manifest))
    except OSError as exc:
        raise ManifestError(f"cannot write the manifests into {out}: {exc.strerror or exc}") from exc
    return Export([out / filename for filename in manifests], notes)


def project_manifests(project: Project, desired: Desired, records: dict[str, ResourceRecord], store_url: str,
                      image: str, repo_uri: str | None) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """File name → manifest, and what was left out and why. Writes nothing (reads the API keys'
    environment variables, to hash them as apply does)."""
    manifests: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
    of_kind = lambda kind: [key for key in desired.order if desired.by_key[key].kind == kind]  # noqa: E731
    if deployments := of_kind("Deployment"):
        config = serve_config(project, desired, records, deployments, store_url)
        manifests["rayservice.yaml"] = rayservice(service_name(project), config, image)
    else:
        notes.append("no Deployment in the specs: no RayService written")
    jobs = [desired.by_key[key] for key in of_kind("TuningJob")]
    if jobs and repo_uri is None:
        notes.append("no RayJob written: pass --repo-uri (a zip of this repository the cluster can fetch) "
                     "for the jobs to run `llmops apply --target` in")
    for job in jobs if repo_uri else []:
        manifests[f"rayjob-{job.name}.yaml"] = rayjob(job.name, job.spec.resources, repo_uri, store_url, image)
    return manifests, notes


def cluster_store_url(project: Project) -> str:
    url = project.artifact_store_url()
    if is_local_url(url):
        raise ManifestError(
            f"the artifact store is a local directory ({url}), which pods cannot reach; configure an object "
            "store (artifact_store: s3://bucket/prefix in llmops.yaml, or LLMOPS_ARTIFACT_STORE), apply, then export")
    return url


def check_repo_uri(uri: str) -> None:
    if "://" not in uri or not uri.endswith(".zip"):
        raise ManifestError(f"--repo-uri {uri!r} must be a URI of a zip archive the cluster can fetch "
                            "(e.g. s3://bucket/llmops-repo.zip or https://…/archive/<commit>.zip)")


def default_image() -> str:
    return f"rayproject/ray:{version('ray')}-py311"


def service_name(project: Project) -> str:
    """The project directory's name as a Kubernetes name (DNS-1123 label)."""
    return re.sub(r"[^a-z0-9-]+", "-", project.root.name.lower()).strip("-")[:63].strip("-") or "llmops"


def runtime_env(store_url: str) -> dict[str, Any]:
    """What every app and job needs on the cluster: the engine, at this version, and the store."""
    return {"pip": [f"{ENGINE_DISTRIBUTION}=={version(ENGINE_DISTRIBUTION)}"],
            "env_vars": {**OFFLINE_ENV, "LLMOPS_ARTIFACT_STORE": store_url}}


# the RayService ---------------------------------------------------------------------
def serve_config(project: Project, desired: Desired, records: dict[str, ResourceRecord], deployments: list[str],
                 store_url: str) -> dict[str, Any]:
    """The Serve config apply deploys for `deployments`: the gateway, then one app each."""
    stale = [key for key in deployments if not _applied(records.get(key), desired.fingerprints[key])]
    if stale:
        raise ManifestError(f"{', '.join(stale)} not applied at the current spec; run `llmops apply` first "
                            "(the export serves the model versions apply made live)")
    apps, entries = [], {}
    for key in deployments:
        resource, record = desired.by_key[key], records[key]
        settings = replace(app_settings(project, resource.name, resource.normalized_spec(),
                                        record.outputs.get("guardrail_policies") or []),
                           log_path=f"{POD_LOG_DIR}/{resource.name}.jsonl")
        routing = Routing().with_model(SLOTS[0], _live_model(key, record, store_url))
        apps.append(with_runtime_env(app_config(settings, routing), store_url))
        entries[resource.name] = gateway_entry(settings, routing.live_version)
    gateway = gateway_config(entries, f"{POD_LOG_DIR}/{GATEWAY_APP}.jsonl")
    return {"applications": [with_runtime_env(gateway, store_url), *apps]}


def _applied(record: ResourceRecord | None, fingerprint: str) -> bool:
    return record is not None and record.fingerprint == fingerprint and bool(record.outputs.get("served"))


def _live_model(key: str, record: ResourceRecord, store_url: str) -> ModelRef:
    """The version apply made live, fetched by the pods from the store (a TuningJob's model)."""
    served = record.outputs["served"]
    if not served.get("path"):
        # A provider's key reaches replicas through a holder actor that apply hands it to; a base
        # model resolves into the store directory of the machine that applies.
        what = "a provider model" if served.get("upstream") else f"base model {served.get('base')}"
        raise ManifestError(f"{key} serves {what}, which only `llmops apply` can serve; the KubeRay export covers "
                            "Deployments of TuningJob models (the pods fetch them from the artifact store)")
    return ModelRef(**{**served, "store_url": store_url})


def with_runtime_env(app: dict[str, Any], store_url: str) -> dict[str, Any]:
    env = runtime_env(store_url)
    own = app.get("runtime_env") or {}
    return {**app, "runtime_env": {**own, **env, "env_vars": {**own.get("env_vars", {}), **env["env_vars"]}}}


def rayservice(name: str, config: dict[str, Any], image: str) -> dict[str, Any]:
    cpus, custom = serve_demand(config)
    workers = max(1, math.ceil(cpus / SERVE_WORKER_CPUS))
    # Each worker offers every custom resource in full: Serve may place any replica on any worker.
    offered = {"resources": {key: _quantity(amount) for key, amount in custom.items()}} if custom else {}
    return {
        "apiVersion": API_VERSION, "kind": "RayService", "metadata": {"name": name},
        "spec": {
            "serveConfigV2": to_yaml(config),
            "rayClusterConfig": cluster_spec(image, [{
                "groupName": "serve", **_replicas(workers), "rayStartParams": {}, **offered,
                "template": pod(image, "ray-worker", _cpu_and_memory(SERVE_WORKER_CPUS)),
            }]),
        },
    }


def serve_demand(config: dict[str, Any]) -> tuple[float, dict[str, float]]:
    """The CPUs and custom resources of every replica the config may scale to."""
    cpus, custom = 0.0, {}
    for app in config["applications"]:
        for deployment in app["deployments"]:
            replicas = (deployment.get("autoscaling_config") or {}).get("max_replicas") or deployment.get("num_replicas", 1)
            options = deployment.get("ray_actor_options") or {}
            cpus += replicas * options.get("num_cpus", 1)
            for key, amount in (options.get("resources") or {}).items():
                custom[key] = custom.get(key, 0) + replicas * amount
    return cpus, custom


# a RayJob per TuningJob -------------------------------------------------------------
def rayjob(name: str, resources: Resources, repo_uri: str, store_url: str, image: str) -> dict[str, Any]:
    """Train TuningJob `name` (and apply what it depends on) on a cluster made for it, deleted after."""
    worker: dict[str, Any] = _cpu_and_memory(resources.cpus_per_worker)
    if resources.gpus_per_worker:
        worker["nvidia.com/gpu"] = str(math.ceil(resources.gpus_per_worker))  # whole devices; Ray shares them
    custom = {resource: _quantity(amount) for resource, amount in resources.custom.items()}  # each node declares
    group = {"groupName": "train", **_replicas(resources.workers), "rayStartParams": {},
             **({"resources": custom} if custom else {}),
             "template": pod(image, "ray-worker", worker)}
    return {
        "apiVersion": API_VERSION, "kind": "RayJob", "metadata": {"name": name},
        "spec": {
            "entrypoint": f"llmops apply --target {shlex.quote(f'TuningJob/{name}')}",
            "runtimeEnvYAML": to_yaml({"working_dir": repo_uri, **runtime_env(store_url)}),
            "shutdownAfterJobFinishes": True,
            "rayClusterSpec": cluster_spec(image, [group]),
        },
    }


# the cluster ------------------------------------------------------------------------
def cluster_spec(image: str, worker_groups: list[dict[str, Any]]) -> dict[str, Any]:
    # No work on the head: it keeps the GCS, the dashboard, Serve's controller and the job's driver.
    return {"rayVersion": version("ray"),
            "headGroupSpec": {"rayStartParams": {"num-cpus": "0"}, "template": pod(image, "ray-head", HEAD_RESOURCES)},
            "workerGroupSpecs": worker_groups}


def pod(image: str, container: str, resources: dict[str, str]) -> dict[str, Any]:
    """A pod template whose container gets the store's credentials from the Secret, if it exists."""
    return {"spec": {"containers": [{
        "name": container, "image": image,
        "resources": {"requests": dict(resources), "limits": dict(resources)},
        "envFrom": [{"secretRef": {"name": STORE_SECRET, "optional": True}}],
    }]}}


class _ManifestDumper(yaml.SafeDumper):
    """Plain YAML for people and kubectl: no &anchors for repeated values, and the embedded
    YAML documents (serveConfigV2, runtimeEnvYAML) as readable `|` blocks."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style="|" if "\n" in text else None)


_ManifestDumper.add_representer(str, _str)


def to_yaml(value: Any) -> str:
    return yaml.dump(value, Dumper=_ManifestDumper, sort_keys=False)


def _cpu_and_memory(cpus: float) -> dict[str, str]:
    return {"cpu": _quantity(cpus), "memory": f"{max(1, math.ceil(cpus)) * MEMORY_GI_PER_CPU}Gi"}


def _quantity(value: float) -> str:
    """A number as Kubernetes writes quantities: 2, 0.5 (never 1e+06)."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _replicas(count: int) -> dict[str, int]:
    return {"replicas": count, "minReplicas": count, "maxReplicas": count}
