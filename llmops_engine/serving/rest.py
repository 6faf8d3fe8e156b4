"""Serve's REST API on the Ray dashboard — the path `serve deploy` uses — over plain HTTP.

`PUT /api/serve/applications/` is declarative for *all* applications of the cluster:
an application missing from the body is deleted. So every write reads the deployed
configs of the other applications first and sends them back unchanged.
No Ray import here: `plan` uses this to observe live applications.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from ..errors import DeploymentError

PATH = "/api/serve/applications/"


@dataclass(frozen=True)
class Dashboard:
    url: str
    headers: dict[str, str]
    timeout_s: float = 30

    def _request(self, method: str, body: dict | None = None) -> bytes:
        data = json.dumps(body).encode() if body is not None else None
        headers = {**self.headers, **({"Content-Type": "application/json"} if data else {})}
        request = urllib.request.Request(self.url.rstrip("/") + PATH, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[-2000:]
            raise DeploymentError(f"Serve REST API {method} {PATH} answered {exc.code}: {detail}") from exc
        except OSError as exc:
            raise DeploymentError(f"cannot reach the Ray dashboard at {self.url}: {exc}") from exc

    # reads -----------------------------------------------------------------
    def details(self) -> dict[str, Any]:
        return json.loads(self._request("GET"))

    def application(self, name: str) -> dict[str, Any] | None:
        """The live application (status, deployments, deployed_app_config), or None."""
        return (self.details().get("applications") or {}).get(name)

    # writes ----------------------------------------------------------------
    def put_application(self, app: dict[str, Any], http_options: dict[str, Any]) -> None:
        """Deploy (or update) one application, keeping every other application as it is."""
        self._put(self._others(app["name"]) + [app], http_options)

    def delete_application(self, name: str, http_options: dict[str, Any]) -> bool:
        details = self.details()
        if name not in (details.get("applications") or {}):
            return False
        self._put(self._others(name, details), http_options)
        return True

    def _others(self, name: str, details: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        details = details or self.details()
        others = []
        for other, app in (details.get("applications") or {}).items():
            if other == name or app.get("status") == "DELETING":
                continue  # an app being deleted has no config left to send back, and stays deleted
            config = app.get("deployed_app_config")
            if config is None:
                raise DeploymentError(
                    f"Serve application '{other}' was deployed imperatively (serve.run), and the declarative "
                    "REST API would delete it; deploy it with a config file or remove it first"
                )
            others.append(config)
        return others

    def _put(self, applications: list[dict[str, Any]], http_options: dict[str, Any]) -> None:
        self._request("PUT", {"http_options": http_options, "applications": applications})


def http_options(host: str, port: int) -> dict[str, Any]:
    return {"host": host, "port": port}
