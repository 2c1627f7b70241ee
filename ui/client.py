"""The UI's one typed client of the REST API. Anything the UI does goes through here, so
anything the UI does a script can do with ``curl``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from ui.events import EventFeed


class ApiError(Exception):
    """An API call failed; ``str()`` is a message fit for the user, ``errors`` the details
    (``{file, line, message}`` for dataset problems, ``{field, message}`` for a spec)."""

    def __init__(self, message: str, errors: list | None = None, status: int = 0) -> None:
        super().__init__(message)
        self.errors = errors or []
        self.status = status

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


def error_of(r: httpx.Response) -> ApiError:
    """The API's refusal as an :class:`ApiError`: its ``detail`` and every entry of ``errors``
    (FastAPI's own 422 lists them under ``detail``: each becomes ``{field, message}``)."""
    try:
        body = r.json()
    except ValueError:
        return ApiError(f"HTTP {r.status_code}: {r.text[:300]}", status=r.status_code)
    detail = body.get("detail", r.text) if isinstance(body, dict) else r.text
    errors = body.get("errors") if isinstance(body, dict) else None
    if isinstance(detail, list):  # FastAPI's request validation
        errors = [{"field": ".".join(str(x) for x in e.get("loc", [])[1:]) or "request", "message": e.get("msg", "")}
                  if isinstance(e, dict) else e for e in detail]
        detail = "invalid request"
    return ApiError(str(detail), errors, status=r.status_code)


class StudioClient:
    def __init__(self, base_url: str, timeout: float = 120.0, token: str | None = None) -> None:
        self.base = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=self.base + "/api", timeout=timeout, headers=headers)

    def with_token(self, token: str | None) -> StudioClient:
        """A client acting as the user ``token`` belongs to (one per browser session)."""
        return StudioClient(self.base, self.http.timeout.read or 120.0, token) if token else self

    def _call(self, method: str, url: str, **kw: Any) -> Any:
        try:
            r = self.http.request(method, url, **kw)
        except httpx.HTTPError as e:
            raise ApiError(f"cannot reach the vlstudio API at {self.base} ({e.__class__.__name__})") from None
        if r.status_code >= 400:
            raise error_of(r)
        return r.json() if r.content else None

    # -- service -------------------------------------------------------------------------
    def health(self) -> dict:
        return self._call("GET", "/health")

    def login(self, username: str, password: str) -> dict:
        return self._call("POST", "/auth/login", json={"username": username, "password": password})

    def me(self) -> dict:
        return self._call("GET", "/auth/me")

    def link_signature(self, resource: str) -> dict:
        """``{sig, expires_in}`` for plain links (``?sig=``) under ``/api/<kind>/<id>/``."""
        return self._call("POST", "/auth/link", json={"path": resource})

    def users(self) -> list[dict]:
        """Admins only."""
        return self._call("GET", "/users")

    # -- datasets ------------------------------------------------------------------------
    def datasets(self) -> list[dict]:
        return self._call("GET", "/datasets")

    def dataset(self, dataset_id: int) -> dict:
        return self._call("GET", f"/datasets/{dataset_id}")

    def upload_dataset(self, path: Path, name: str | None = None, model_id: int | None = None, *,
                       val_fraction: float = 0.0, validation: Path | None = None, max_seq_length: int | None = None,
                       truncation: str | None = None, drop_bad_lines: bool = False, preset: str | None = None) -> dict:
        """Upload a zip. ``model_id``: also check tiles and token lengths with that model, at the
        tiling ``preset`` trains it with (and ``max_seq_length``: the lines over it are named,
        ``truncation`` "truncate" warns instead of refusing). ``val_fraction`` or a ``validation``
        .jsonl: the held-out split.
        ``drop_bad_lines``: register the lines without errors. A large annotation comes back
        ``status: validating``: poll :meth:`dataset` for ``progress``."""
        fields = (("name", name), ("model_id", model_id), ("preset", preset), ("max_seq_length", max_seq_length),
                  ("truncation", truncation), ("val_fraction", val_fraction or None),
                  ("drop_bad_lines", "true" if drop_bad_lines else None))
        form = {k: str(v) for k, v in fields if v is not None}
        with open(path, "rb") as f, open(validation or path, "rb") as v:
            files = {"file": (path.name, f, "application/zip")}
            if validation is not None:
                files["validation"] = (validation.name, v, "application/jsonl")
            return self._call("POST", "/datasets", files=files, data=form or None)

    def cancel_validation(self, dataset_id: int) -> dict:
        return self._call("POST", f"/datasets/{dataset_id}/cancel-validation")

    def register_demo_dataset(self, val_fraction: float = 0.0) -> dict:
        return self._call("POST", "/datasets/demo", params={"val_fraction": val_fraction} if val_fraction else None)

    def sample(self, dataset_id: int, n: int, **params: Any) -> dict:
        """The preview of sample ``n`` (1-based line of the uploaded file)."""
        return self._call("GET", f"/datasets/{dataset_id}/samples/{n}",
                          params={k: v for k, v in params.items() if v is not None})

    def build_meta(self, datasets: list[dict], mixture: dict | None = None, on_conflict: str = "error") -> dict:
        """``{meta, summary}``: the meta JSON of ``datasets`` (``dataset_id``, ``repeat_time``,
        ``data_augment``...) merged with ``mixture``."""
        return self._call("POST", "/meta", json={"datasets": datasets, "mixture": mixture,
                                                 "on_conflict": on_conflict})

    # -- models and presets -----------------------------------------------------------------
    def models(self) -> list[dict]:
        return self._call("GET", "/models")

    def import_model(self, path: str, name: str | None = None) -> dict:
        """Convert and register a checkpoint folder on the server (under VLSTUDIO_DATA_ROOTS)."""
        return self._call("POST", "/models/import", json={"path": path, "name": name or None})

    def start_import(self, path: str, name: str | None = None) -> dict:
        """Start converting and registering a checkpoint folder; the import job (``id``, ``status``,
        ``progress``, ``message``) without waiting for it."""
        return self._call("POST", "/models/import", json={"path": path, "name": name or None, "wait": False})

    def model_import(self, import_id: int) -> dict:
        """An import's status, progress (0..1), message, error and, once done, ``model_id``."""
        return self._call("GET", f"/models/imports/{import_id}")

    def cancel_import(self, import_id: int) -> dict:
        return self._call("POST", f"/models/imports/{import_id}/cancel")

    def inspect_model(self, path: str) -> dict:
        """Format, family, template, parameters and tiling of a checkpoint folder, before import."""
        return self._call("POST", "/models/inspect", json={"path": path})

    def presets(self) -> dict:
        return self._call("GET", "/presets")

    def resolve(self, preset: str, hyperparameters: dict, model_id: int | None = None) -> dict:
        """``{hyperparameters, derived}``: the preset with overrides (over ``model_id``'s own tiling),
        validated (422 lists every problem), and the derived values (gradient accumulation, global
        batch, precision...)."""
        body: dict = {"preset": preset, "hyperparameters": hyperparameters}
        if model_id is not None:
            body["model_id"] = model_id
        return self._call("POST", "/presets/resolve", json=body)

    # -- jobs ----------------------------------------------------------------------------
    def create_job(self, dataset_id: int | None, model_id: int, preset: str, hyperparameters: dict,
                   mixture: dict | None = None) -> dict:
        """One dataset (``dataset_id``) or a ``mixture`` (``{datasets: [...], meta_path?, meta_base?}``)."""
        body = {"model_id": model_id, "preset": preset, "hyperparameters": hyperparameters}
        body.update({"mixture": mixture} if mixture is not None else {"dataset_id": dataset_id})
        return self._call("POST", "/jobs", json=body)

    def estimate(self, dataset_id: int, model_id: int, preset: str, hyperparameters: dict) -> dict:
        """GPU memory per device for a spec, without submitting it."""
        return self._call("POST", "/jobs/estimate", json={"dataset_id": dataset_id, "model_id": model_id,
                                                          "preset": preset, "hyperparameters": hyperparameters})

    def jobs(self) -> list[dict]:
        return self._call("GET", "/jobs")

    def job(self, job_id: int) -> dict:
        return self._call("GET", f"/jobs/{job_id}")

    def logs(self, job_id: int, after: int = 0, limit: int = 5000) -> list[dict]:
        return self._call("GET", f"/jobs/{job_id}/logs", params={"after": after, "limit": limit})

    def full_log(self, job_id: int) -> str:
        """Every log line of a job, paged through the cursor (for the download button)."""
        out: list[str] = []
        after = 0
        while page := self.logs(job_id, after=after, limit=10000):
            out += [r["line"] for r in page]
            after = page[-1]["seq"]
        return "\n".join(out) + ("\n" if out else "")

    def metrics(self, job_id: int, after: int = 0) -> list[dict]:
        return self._call("GET", f"/jobs/{job_id}/metrics", params={"after": after})

    def compare_jobs(self, ids: list[int]) -> dict:
        """``{jobs, series, differing, evaluations}`` of 2 to 8 jobs (``GET /api/jobs/compare``)."""
        return self._call("GET", "/jobs/compare", params=[("ids", i) for i in ids])

    def job_feed(self, job_id: int, cursor: str) -> EventFeed:
        """The job's event stream from ``cursor`` (``LOGSEQ:METRICSEQ``) on, as this user."""
        auth = {k: v for k, v in self.http.headers.items() if k.lower() == "authorization"}
        return EventFeed(f"{self.base}/api/jobs/{job_id}/events", auth, cursor)

    def cancel(self, job_id: int) -> dict:
        return self._call("POST", f"/jobs/{job_id}/cancel")

    def resume(self, job_id: int) -> dict:
        return self._call("POST", f"/jobs/{job_id}/resume")

    def retry(self, job_id: int) -> dict:
        return self._call("POST", f"/jobs/{job_id}/retry")

    # -- evaluations and playground (issue 8) -----------------------------------------------
    def create_evaluation(self, dataset_id: int | None, models: list[dict], split: str = "validation",
                          metrics: list[str] | None = None, params: dict | None = None,
                          mixture: dict | None = None, benchmarks: list[str] | None = None) -> dict:
        """On one dataset's split, (``mixture``: ``{"job_id": N}`` or ``{"datasets": [...]}``)
        on every held-out part of a mixture, or (``benchmarks``: registered names) a benchmark
        suite, each benchmark with its own settings and metrics."""
        data = ({"benchmarks": benchmarks} if benchmarks is not None else {"mixture": mixture}
                if mixture is not None else {"dataset_id": dataset_id})
        return self._call("POST", "/evaluations", json={**data, "split": split, "models": models,
                                                        "metrics": metrics or [], "params": params or {}})

    def benchmarks(self) -> list[dict]:
        """The evaluation guide's benchmarks, ``registered`` or not (``GET /api/benchmarks``)."""
        return self._call("GET", "/benchmarks")

    def evaluation_table(self, evaluation_id: int) -> dict:
        """The one table of a finished evaluation: rows benchmark figures, columns models."""
        return self._call("GET", f"/evaluations/{evaluation_id}/table")

    def evaluation_table_export(self, evaluation_id: int, fmt: str) -> str:
        r = self.http.get(f"/evaluations/{evaluation_id}/table", params={"format": fmt})
        if r.status_code >= 400:
            raise error_of(r)
        return r.text

    def evaluations(self) -> list[dict]:
        return self._call("GET", "/evaluations")

    def evaluation(self, evaluation_id: int) -> dict:
        return self._call("GET", f"/evaluations/{evaluation_id}")

    def evaluation_results(self, evaluation_id: int, only_differences: bool = False) -> dict:
        return self._call("GET", f"/evaluations/{evaluation_id}/results",
                          params={"only_differences": only_differences})

    def evaluation_download(self, evaluation_id: int) -> str:
        r = self.http.get(f"/evaluations/{evaluation_id}/download")
        if r.status_code >= 400:
            raise ApiError(f"HTTP {r.status_code}: {r.text[:300]}", status=r.status_code)
        return r.text

    def chat_stream(self, model_id: int, messages: list[dict], image_b64: str | None = None,
                    job_id: int | None = None, max_new_tokens: int = 256):  # noqa: ANN201
        """Yield reply pieces as the server streams them (SSE ``token`` events)."""
        import json as _json

        body = {"messages": messages, "image": image_b64, "job_id": job_id, "max_new_tokens": max_new_tokens}
        try:
            with self.http.stream("POST", f"/models/{model_id}/chat", json=body,
                                  timeout=httpx.Timeout(600, connect=10)) as r:
                if r.status_code >= 400:
                    r.read()
                    raise error_of(r)
                kind = None
                for line in r.iter_lines():
                    if line.startswith("event: "):
                        kind = line[7:]
                    elif line.startswith("data: "):
                        data = _json.loads(line[6:])
                        if kind == "token":
                            yield data["text"]
                        elif kind == "error":
                            raise ApiError(data.get("detail", "generation failed"))
        except httpx.HTTPError as e:
            raise ApiError(f"cannot reach the vlstudio API at {self.base} ({e.__class__.__name__})") from None
