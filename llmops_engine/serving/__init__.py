"""Serving deployments on Ray Serve behind an OpenAI-compatible API.

Light modules (importable by `plan`, the CLI and the controller's `observe`):
    config   the declarative Serve application config built from a Deployment spec
    rest     the dashboard's Serve REST API (the path `serve deploy` uses), plain HTTP
    logs     the per-request log store (`llmops logs`)
    metrics  Prometheus text exposition
    openai_api  request/response shapes and the OpenAI error envelope
    access   which deployments a key may use, which one a request's `model` selects
    deploy   apply a model version to an application; `rollback` (`llmops rollback`)
    rollout  rolling / blue-green / canary transitions (imports Ray inside functions)
Imported by the cluster only (Ray Serve, FastAPI, torch):
    app      the application builders (the import paths)
    gateway  the project's one HTTP endpoint: auth, routing by `model`, forwarding by handle
    front    the HTTP front shared by gateway and ingress: body limits, 499s, log and metrics
    ingress  a deployment's OpenAI API behind the gateway: traffic split, per-slot outcomes
    slot     a model deployment holding one model version, with dynamic batching
"""
