"""The project's exception tree.

Third-party failures (Ray, DVC, Great Expectations, HTTP) are caught at the boundary
that calls them and re-raised as one of these, with the original as ``__cause__``.
The CLI maps each class to an exit code and prints its message; tracebacks are for
bugs only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class LLMOpsError(Exception):
    """Base of every error the engine reports to a user."""

    exit_code = 1


@dataclass(frozen=True)
class SpecIssue:
    """One problem in one spec file, located as precisely as the YAML allows."""

    file: str
    line: int
    column: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class SpecError(LLMOpsError):
    """Specs failed to load or validate. Carries every issue found in one pass."""

    def __init__(self, issues: list[SpecIssue]):
        self.issues = sorted(issues, key=lambda i: (i.file, i.line, i.column, i.path))
        count = len(self.issues)
        lines = "\n".join(str(i) for i in self.issues)
        super().__init__(f"{count} spec error{'s' if count != 1 else ''}:\n{lines}")


class ProjectError(LLMOpsError):
    """The project file or repository layout is wrong."""


class PlanError(LLMOpsError):
    """A plan cannot be made or used (stale saved plan, resource problem)."""


class StalePlanError(PlanError):
    """A saved plan no longer matches the observed state."""


class LiveStateUnknown(LLMOpsError):
    """A controller could not observe live state (e.g. no cluster reachable from a CI plan
    job). The plan says so instead of reporting drift; it is never a reason to act."""


class LockError(LLMOpsError):
    """Another apply holds the state lock."""

    exit_code = 4


class ControllerError(LLMOpsError):
    """A controller failed to reconcile a resource."""


class NoControllerError(ControllerError):
    """No controller is registered for a kind."""


class DataError(ControllerError):
    """Reading or transforming a dataset failed."""


class ValidationFailed(ControllerError):
    """A dataset failed its Great Expectations rules."""

    exit_code = 5


class DVCError(ControllerError):
    """A DVC command failed."""


class TrainingError(ControllerError):
    """A tuning job failed."""


class ExportError(TrainingError):
    """A TuningJob export could not be written faithfully or failed its verification; nothing is published."""


class EvaluationError(ControllerError):
    """An evaluation could not be run (this fails its gate closed)."""


class KnowledgeBaseError(ControllerError):
    """Reading, chunking, embedding or indexing a knowledge base failed; the previous index keeps serving."""


class ProviderError(ControllerError):
    """A provider (hosted OpenAI-compatible model) failed or refused a call. `code` is the OpenAI-style
    error code given to callers; `status` the upstream HTTP status (None: no HTTP answer);
    `client_fault`: the request itself was refused (400/413/422), so no fallback can help."""

    def __init__(self, message: str, code: str, status: int | None = None, client_fault: bool = False):
        super().__init__(message)
        self.code = code
        self.status = status
        self.client_fault = client_fault

    def __reduce__(self):  # the error crosses process boundaries (Serve replicas, eval tasks) via pickle
        return type(self), (str(self), self.code, self.status, self.client_fault)


class GuardrailError(ControllerError):
    """A guardrail policy or its test cases cannot be used (a bad cases line, an unreadable schema file,
    a tokenizer that cannot be loaded); nothing is published and live deployments keep their policy."""


class GateFailed(ControllerError):
    """An evaluation ran and its thresholds were not met (or the gate has no result for a model).

    ``table`` is the metric | candidate | baseline | threshold | pass/fail table when the gate
    ran, and ``report_dir`` where its report was kept; both are None for a missing result.
    """

    exit_code = 3

    def __init__(self, message: str, table: str | None = None, report_dir: Path | None = None):
        super().__init__(message)
        self.table = table
        self.report_dir = report_dir


class ModelLoadError(ControllerError):
    """A base model or tuned model could not be found or loaded."""


class ChatTemplateError(ModelLoadError):
    """A `format: chat` Prompt cannot render through a model's chat template: the model has
    none, the template rejects the messages, or it differs from the one a model was tuned with."""


class EngineError(ControllerError):
    """A serving engine failed while generating (a llama.cpp decode error, a prompt longer than
    the engine's context); the request fails, the replica keeps serving."""


class DeploymentError(ControllerError):
    """Deploying or rolling out a model failed; the live version keeps serving."""


class RolloutFailed(DeploymentError):
    """A canary or blue-green analysis failed and the rollout was rolled back."""

    exit_code = 6


class LoadTestError(LLMOpsError):
    """A load test cannot run: the deployment was never applied, its recorded endpoint is not this
    project's serve address, its API key is unset, or the load asked for is out of bounds. (A load
    test that ran and missed its thresholds is a GateFailed.)"""


class ClusterError(LLMOpsError):
    """The Ray cluster could not be started or reached."""


class StoreError(LLMOpsError):
    """The artifact store could not be read or written (URL, credentials, network)."""


class ManifestError(LLMOpsError):
    """`llmops export kuberay` cannot write manifests that would work on a cluster: the store is a
    local directory, a Deployment is not applied at its current spec, or an option is malformed."""
