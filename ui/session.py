"""Which API client a browser session uses. When users are enabled, the login page stores
the session's bearer token here (keyed by Gradio's session hash) and every handler asks for
``sessions.api(request)``; without users every session shares the anonymous client."""

from __future__ import annotations

import threading
import time
from urllib.parse import quote

import gradio as gr

from ui.client import StudioClient


class Sessions:
    def __init__(self, api_url: str, browser_api_url: str | None = None) -> None:
        self.anonymous = StudioClient(api_url)
        #: where the *browser* reaches the API for plain links (downloads); "" when the UI is
        #: mounted in the API process (same origin)
        self.browser_api_url = (api_url if browser_api_url is None else browser_api_url).rstrip("/")
        self._tokens: dict[str, str] = {}
        self._clients: dict[str, StudioClient] = {}
        self._sigs: dict[tuple[str, str], tuple[str, float]] = {}  # (token, resource) -> (sig, expires)
        self._lock = threading.Lock()

    def api(self, request: gr.Request | None) -> StudioClient:
        return self.api_for(getattr(request, "session_hash", None))

    def api_for(self, session_hash: str | None) -> StudioClient:
        token = self._tokens.get(session_hash or "")
        return self.api_for_token(token) if token else self.anonymous

    def link(self, request: gr.Request | None, path: str) -> str:
        """A URL of the API for an ``<a href>`` or ``<img src>``. Links cannot send headers and a
        bearer token never goes in a URL (access logs, history, Referer): signed-in sessions add
        a short-lived signature of the resource (``?sig=``, ``POST /api/auth/link``) instead."""
        url = f"{self.browser_api_url}/api{path}"
        token = self._tokens.get(getattr(request, "session_hash", None) or "")
        if not token:
            return url
        sep = "&" if "?" in path else "?"
        return f"{url}{sep}sig={quote(self._signature(token, '/api' + path))}"

    def _signature(self, token: str, api_path: str) -> str:
        parts = api_path.split("/")
        resource = "/".join(parts[:4]) + "/"  # /api/<kind>/<id>/: one signature per resource
        now = time.monotonic()
        with self._lock:
            cached = self._sigs.get((token, resource))
        if cached and cached[1] > now:
            return cached[0]
        got = self.api_for_token(token).link_signature(resource)
        with self._lock:
            if len(self._sigs) > 10_000:
                self._sigs.clear()
            self._sigs[(token, resource)] = (got["sig"], now + got["expires_in"] / 2)  # renewed well before expiry
        return got["sig"]

    def api_for_token(self, token: str) -> StudioClient:
        with self._lock:
            if token not in self._clients:
                self._clients[token] = self.anonymous.with_token(token)
            return self._clients[token]

    def sign_in(self, request: gr.Request, token: str | None) -> None:
        with self._lock:
            if token:
                self._tokens[request.session_hash or ""] = token
            else:
                self._tokens.pop(request.session_hash or "", None)
