"""Serving deployments on Ray Serve behind an OpenAI-compatible API.

Light modules (importable by `plan`, the CLI and the controller's `observe`):
    config   the declarative Serve application config built from a Deployment spec
    rest     the dashboard's Serve REST API (the path `serve deploy` uses), plain HTTP
    logs     the per-request log store (`llmops logs`)
    metrics  Prometheus text exposition
    openai_api  request/response shapes and the OpenAI error envelope
    deploy   apply a model version to an application; `rollback` (`llmops rollback`)
    rollout  rolling / blue-green / canary transitions (imports Ray inside functions)
Imported by the cluster only (Ray Serve, FastAPI, torch):
    app      the application builder (the import path)
    ingress  the OpenAI-compatible HTTP API, traffic split, auth, metrics, request log
    slot     a model deployment holding one model version, with dynamic batching
"""
