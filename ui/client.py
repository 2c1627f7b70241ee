"""The UI's one typed client of the REST API. Anything the UI does goes through here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx


class ApiError(Exception):
    """An API call failed; ``str()`` is a message fit for the user."""

    def __init__(self, message: str, errors: list | None = None) -> None:
        super().__init__(message)
        self.errors = errors or []

    def pretty(self) -> str:
        lines = [str(self)]
        for e in self.errors[:20]:
            if isinstance(e, dict) and "line" in e:
                lines.append(f"- {e.get('file', '')} line {e['line']}: {e.get('message', '')}")
            elif isinstance(e, dict):
                lines.append(f"- {e.get('field', '')}: {e.get('message', '')}")
            else:
                lines.append(f"- {e}")
        if len(self.errors) > 20:
            lines.append(f"... and {len(self.errors) - 20} more")
        return "\n".join(lines)


class StudioClient:
    def __init__(self, base_url: str, timeout: float = 120.0) -> None:
        self.base = base_url.rstrip("/")
        self.http = httpx.Client(base_url=self.base + "/api", timeout=timeout)

    def _call(self, method: str, url: str, **kw: Any) -> Any:
        try:
            r = self.http.request(method, url, **kw)
        except httpx.HTTPError as e:
            raise ApiError(f"cannot reach the vlstudio API at {self.base}: {e}") from None
        if r.status_code >= 400:
            try:
                body = r.json()
                raise ApiError(str(body.get("detail", r.text)), body.get("errors"))
            except ValueError:
                raise ApiError(f"HTTP {r.status_code}: {r.text[:300]}") from None
        return r.json()

    def health(self) -> dict:
        return self._call("GET", "/health")

    def datasets(self) -> list[dict]:
        return self._call("GET", "/datasets")

    def upload_dataset(self, path: Path, name: str | None = None) -> dict:
        with open(path, "rb") as f:
            return self._call("POST", "/datasets", files={"file": (path.name, f, "application/zip")},
                              data={"name": name} if name else None)

    def register_demo_dataset(self) -> dict:
        return self._call("POST", "/datasets/demo")

    def models(self) -> list[dict]:
        return self._call("GET", "/models")

    def presets(self) -> dict:
        return self._call("GET", "/presets")

    def create_job(self, dataset_id: int, model_id: int, preset: str, hyperparameters: dict) -> dict:
        return self._call("POST", "/jobs", json={"dataset_id": dataset_id, "model_id": model_id, "preset": preset,
                                                 "hyperparameters": hyperparameters})

    def jobs(self) -> list[dict]:
        return self._call("GET", "/jobs")

    def job(self, job_id: int) -> dict:
        return self._call("GET", f"/jobs/{job_id}")

    def logs(self, job_id: int, after: int = 0, limit: int = 5000) -> list[dict]:
        return self._call("GET", f"/jobs/{job_id}/logs", params={"after": after, "limit": limit})

    def metrics(self, job_id: int, after: int = 0) -> list[dict]:
        return self._call("GET", f"/jobs/{job_id}/metrics", params={"after": after})

    def cancel(self, job_id: int) -> dict:
        return self._call("POST", f"/jobs/{job_id}/cancel")
