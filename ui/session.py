"""Which API client a browser session uses. When users are enabled, the login page stores
the session's bearer token here (keyed by Gradio's session hash) and every handler asks for
``sessions.api(request)``; without users every session shares the anonymous client."""

from __future__ import annotations

import threading

import gradio as gr

from ui.client import StudioClient


class Sessions:
    def __init__(self, api_url: str) -> None:
        self.anonymous = StudioClient(api_url)
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

    def sign_in(self, request: gr.Request, token: str | None) -> None:
        with self._lock:
            if token:
                self._tokens[request.session_hash or ""] = token
            else:
                self._tokens.pop(request.session_hash or "", None)
