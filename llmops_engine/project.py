"""The project file (`llmops.yaml`) and the repository it describes."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field, ValidationError, field_validator

from .errors import ProjectError
from .specs.base import StrictModel
from .specs.loader import MAX_SPEC_BYTES, load_resources, read_documents
from .specs.resource import Resource

PROJECT_FILE = "llmops.yaml"
MAX_PROJECT_FILE_BYTES = 64 * 1024


class RaySettings(StrictModel):
    address: str | None = Field(default=None, description="Cluster address; RAY_ADDRESS wins; default: local head.")
    num_cpus: int | None = Field(default=None, description="Logical CPUs of the local head (default: twice the cores, so that idle "
                                                               "model replicas never starve a training job).")


class ServeSettings(StrictModel):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)


class ProjectSettings(StrictModel):
    spec_dirs: list[str] = Field(default_factory=lambda: ["specs"])
    state_dir: str = Field(
        default=".llmops", description="Local journal, history and caches: a relative folder inside the repository."
    )
    artifact_store: str = Field(
        default=".llmops/store", description="Where outputs (by fingerprint), resource records and the apply lock live: a directory, "
        "a file:// URL, or any fsspec URL such as s3://bucket/prefix or gs://bucket/prefix."
    )
    lock_ttl_s: float = Field(default=120, gt=0)
    max_spec_bytes: int = Field(
        default=MAX_SPEC_BYTES, gt=0, description="Largest spec file accepted; bounds what one pull request can make validate read."
    )
    ray: RaySettings = Field(default_factory=RaySettings)
    serve: ServeSettings = Field(default_factory=ServeSettings)


    @field_validator("state_dir")
    @classmethod
    def _inside_the_repository(cls, value: str) -> str:
        # Read-only commands write only here: it must not point anywhere else.
        parts = Path(value).parts
        if not value or Path(value).is_absolute() or ".." in parts or "\x00" in value:
            raise ValueError("must be a relative folder inside the repository (no leading '/', no '..')")
        return value


@dataclass(frozen=True)
class Project:
    root: Path
    settings: ProjectSettings

    @property
    def state_dir(self) -> Path:
        return self.root / self.settings.state_dir

    def artifact_store_url(self) -> str:
        url = os.environ.get("LLMOPS_ARTIFACT_STORE") or self.settings.artifact_store
        if "://" in url:
            return url
        return str((self.root / url).resolve())

    def load_resources(self) -> list[Resource]:
        """Every spec, validated (SpecError otherwise), with the project's settings and cache."""
        return load_resources(self.root, self.settings.spec_dirs, self.settings.max_spec_bytes, self.state_dir / "cache")

    def engine_dirs(self) -> tuple[Path, ...]:
        """The folders inside the repository that hold the engine's own output (state, a local
        store): never an input, or an evaluation's report would change a knowledge base."""
        url = self.artifact_store_url()
        return (self.state_dir, *(() if "://" in url else (Path(url),)))

    def ray_address(self) -> str | None:
        return os.environ.get("RAY_ADDRESS") or self.settings.ray.address


def find_root(start: Path) -> Path:
    """The nearest directory holding llmops.yaml, else the nearest git work tree, else start."""
    start = start.resolve()
    for candidate in (start, *start.parents):
        if (candidate / PROJECT_FILE).is_file():
            return candidate
    for candidate in (start, *start.parents):
        if (candidate / ".git").exists():
            return candidate
    return start


def load_project(start: Path | None = None) -> Project:
    root = find_root(start or Path.cwd())
    path = root / PROJECT_FILE
    if not path.is_file():
        return Project(root, ProjectSettings())
    try:
        return Project(root, ProjectSettings.model_validate(_read_settings(path)))
    except ValidationError as exc:
        lines = [f"{PROJECT_FILE}: {'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
        raise ProjectError("\n".join(lines)) from exc


def _read_settings(path: Path) -> dict:
    """llmops.yaml through the spec loader's bounded YAML reader (no alias bombs, no deep nesting)."""
    issues: list = []
    documents = read_documents(path, PROJECT_FILE, issues, max_bytes=MAX_PROJECT_FILE_BYTES)
    if len(documents) > 1:
        raise ProjectError(f"{PROJECT_FILE}: holds {len(documents)} YAML documents; write one")
    if issues:
        raise ProjectError("\n".join(str(issue) for issue in issues))
    value = documents[0].value if documents else None
    if value is not None and not isinstance(value, dict):
        raise ProjectError(f"{PROJECT_FILE}: must be a mapping of settings, not {type(value).__name__}")
    return value or {}
