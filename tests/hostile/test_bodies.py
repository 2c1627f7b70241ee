"""A real API process (with the Gradio UI mounted, login on): bodies are limited on the bytes
that arrive (chunked and multipart included) without the process growing; Gradio's upload
route wants a login and has the same limit, also when the UI runs as its own service
(``vlstudio ui``); the access log carries no credential."""

from __future__ import annotations

import re
import select
import socket
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import start_studio, start_ui, stop_studio

UPLOAD_LIMIT = 8 << 20


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    s = start_studio(tmp_path_factory.mktemp("bodies"), with_ui=True, workers=0,
                     extra_env={"VLSTUDIO_AUTH_ENABLED": "true", "VLSTUDIO_MAX_UPLOAD_BYTES": str(UPLOAD_LIMIT)})
    yield s
    stop_studio(s)


def _peak_rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))


def chunked_post(port: int, path: str, total: int, content_type: str = "application/json") -> tuple[int, int]:
    """POST ``total`` bytes with Transfer-Encoding: chunked (no Content-Length), 1 MiB a chunk,
    stopping when the server answers or closes; returns (status, bytes sent)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: {content_type}\r\n"
                 "Transfer-Encoding: chunked\r\n\r\n".encode())
    chunk, sent = b" " * (1 << 20), 0
    try:
        while sent < total and not select.select([sock], [], [], 0)[0]:
            sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            sent += len(chunk)
        if sent >= total:
            sock.sendall(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError, TimeoutError):
        pass  # the server stopped reading: its answer is waiting
    head = sock.recv(65536).decode("latin-1")
    sock.close()
    return int(head.split()[1]), sent


def test_a_chunked_oversized_body_is_refused_without_memory_growth(studio):
    port = int(studio.url.rsplit(":", 1)[1])
    pid = studio.procs[0].pid
    before = _peak_rss_kib(pid)
    status, sent = chunked_post(port, "/api/auth/login", 512 << 20)  # no login needed on this route
    assert status == 413
    assert sent < 128 << 20, f"the server read {sent:,} bytes before refusing"
    grew_mib = (_peak_rss_kib(pid) - before) / 1024
    assert grew_mib < 32, f"the API grew by {grew_mib:.0f} MiB"
    assert httpx.get(studio.url + "/api/health", timeout=10).status_code == 200


def test_multipart_to_a_json_route_gets_the_json_limit(studio):
    files = {"file": ("x.bin", b"\0" * (2 << 20))}
    r = httpx.post(studio.url + "/api/auth/login", files=files, timeout=30)
    assert r.status_code == 413 and "exceeds the limit of 1,048,576" in r.json()["detail"]


def test_gradio_upload_needs_a_login_and_has_the_upload_limit(studio):
    upload = studio.url + "/gradio_api/upload"
    r = httpx.post(upload, files={"files": ("a.bin", b"x" * 1000)}, timeout=30)
    assert r.status_code == 401
    status, _ = chunked_post(int(studio.url.rsplit(":", 1)[1]), "/gradio_api/upload", 64 << 20,
                             "multipart/form-data; boundary=x")
    assert status == 401  # refused before a byte of the body is read
    with httpx.Client(base_url=studio.url, timeout=60) as c:
        assert c.post("/api/auth/cookie", headers=studio.headers).status_code == 204
        assert "vlstudio_session" in c.cookies
        r = c.post("/gradio_api/upload", files={"files": ("a.bin", b"x" * 1000)})
        assert r.status_code == 200, r.text
        r = c.post("/gradio_api/upload", files={"files": ("big.bin", b"x" * (UPLOAD_LIMIT + 1))})
        assert r.status_code == 413
        c.delete("/api/auth/cookie")
        assert "vlstudio_session" not in c.cookies
        assert c.post("/gradio_api/upload", files={"files": ("a.bin", b"x")}).status_code == 401


@pytest.fixture(scope="module")
def standalone_ui(studio):
    """``vlstudio ui`` on its own port, in front of the login-on API; yields its URL."""
    proc, url = start_ui(studio)
    yield url
    proc.terminate()
    proc.wait(timeout=20)


def test_the_standalone_uis_upload_route_needs_a_login_the_api_accepts(studio, standalone_ui):
    upload = standalone_ui + "/gradio_api/upload"
    assert httpx.post(upload, files={"files": ("a.bin", b"x" * 1000)}, timeout=30).status_code == 401
    status, _ = chunked_post(int(standalone_ui.rsplit(":", 1)[1]), "/gradio_api/upload", 64 << 20,
                             "multipart/form-data; boundary=x")
    assert status == 401  # refused before the body is read
    bad = {"Authorization": "Bearer not-a-token"}
    assert httpx.post(upload, headers=bad, files={"files": ("a.bin", b"x")}, timeout=30).status_code == 401
    with httpx.Client(base_url=standalone_ui, timeout=60) as c:
        assert c.post("/api/auth/cookie", headers=bad).status_code == 401 and "vlstudio_session" not in c.cookies
        assert c.post("/api/auth/cookie", headers=studio.headers).status_code == 204
        assert "vlstudio_session" in c.cookies
        r = c.post("/gradio_api/upload", files={"files": ("a.bin", b"x" * 1000)})
        assert r.status_code == 200, r.text
        r = c.post("/gradio_api/upload", files={"files": ("big.bin", b"x" * (UPLOAD_LIMIT + 1))})
        assert r.status_code == 413, r.text
        c.delete("/api/auth/cookie")
        assert "vlstudio_session" not in c.cookies
        assert c.post("/gradio_api/upload", files={"files": ("a.bin", b"x")}).status_code == 401


def test_no_credential_in_the_access_log(studio):
    token = studio.headers["Authorization"].split()[1]
    with httpx.Client(base_url=studio.url, timeout=30) as c:
        sig = c.post("/api/auth/link", json={"path": "/api/jobs/1/"}, headers=studio.headers).json()["sig"]
        c.get("/api/jobs/1/files/spec.json", params={"sig": sig})
        c.get("/api/jobs", params={"access_token": token})
    time.sleep(0.5)
    log = (studio.data_dir / "api.log").read_text()
    assert "/api/jobs/1/files/spec.json?sig=[redacted]" in log
    assert "access_token=[redacted]" in log
    assert token not in log and sig not in log
