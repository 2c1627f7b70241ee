"""Which API client a browser session uses. When users are enabled, the login page stores
the session's bearer token here (keyed by Gradio's session hash) and every handler asks for
``sessions.api(request)``; without users every session shares the anonymous client."""

from __future__ import annotations

import threading
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
        self._lock = threading.Lock()

    def api(self, request: gr.Request | None) -> StudioClient:
        return self.api_for(getattr(request, "session_hash", None))

    def api_for(self, session_hash: str | None) -> StudioClient:
        token = self._tokens.get(session_hash or "")
        if not token:
            return self.anonymous
        with self._lock:
            if token not in self._clients:
                self._clients[token] = self.anonymous.with_token(token)
            return self._clients[token]

    def link(self, request: gr.Request | None, path: str) -> str:
        """A URL of the API for an ``<a href>``: links cannot send headers, so the token rides
        in ``access_token`` (the API accepts it there for downloads and EventSource)."""
        token = self._tokens.get(getattr(request, "session_hash", None) or "")
        sep = "&" if "?" in path else "?"
        return f"{self.browser_api_url}/api{path}" + (f"{sep}access_token={quote(token)}" if token else "")

    def sign_in(self, request: gr.Request, token: str | None) -> None:
        with self._lock:
            if token:
                self._tokens[request.session_hash or ""] = token
            else:
                self._tokens.pop(request.session_hash or "", None)
