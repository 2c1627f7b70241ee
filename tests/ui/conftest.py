"""Browser fixtures: Debian's Chromium driven headless by Playwright (Playwright's own
browser download does not work where CI runs; ``.ci/setup-browser.sh`` installs Chromium)."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _root_conftest():  # noqa: ANN202
    """tests/conftest.py by path: conftest modules share one name, so ``import conftest`` is ambiguous."""
    name = "vlstudio_root_conftest"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "tests" / "conftest.py")
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = REPO / "test-artifacts" / "screenshots"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="session")
def browser() -> Iterator:
    from playwright.sync_api import sync_playwright

    assert CHROMIUM.exists(), "Chromium is missing: run .ci/setup-browser.sh"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):  # noqa: ANN001, ANN201
    outcome = yield
    setattr(item, "rep_" + outcome.get_result().when, outcome.get_result())


@pytest.fixture
def page(browser, request) -> Iterator:
    context = browser.new_context(viewport={"width": 1360, "height": 900}, accept_downloads=True)
    pg = context.new_page()
    pg.set_default_timeout(30_000)
    yield pg
    if getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed:
        shot(pg, f"failed-{request.node.name}")  # what the user saw when the test failed
    context.close()


def shot(target, name: str) -> Path:  # noqa: ANN001
    """Save a screenshot of a page (all of it) or of one element, as a test artifact."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    if hasattr(target, "goto"):
        target.screenshot(path=str(path), full_page=True)
    else:
        target.screenshot(path=str(path))
    return path


@pytest.fixture
def studio(tmp_path: Path) -> Iterator:
    """API with the UI mounted at / + a Celery worker, as real processes (embedded mode)."""
    root = _root_conftest()
    s = root.start_studio(tmp_path, with_ui=True)
    yield s
    root.stop_studio(s)


@pytest.fixture
def studio_with_roots(tmp_path: Path, monkeypatch) -> Iterator:  # noqa: ANN001
    """As ``studio``, with ``tmp_path/shared`` as the server's allowed data root."""
    root = _root_conftest()
    monkeypatch.setenv("VLSTUDIO_DATA_ROOTS", str(tmp_path / "shared"))
    s = root.start_studio(tmp_path, with_ui=True)
    yield s
    root.stop_studio(s)


@pytest.fixture
def studio_with_users(tmp_path: Path) -> Iterator:
    """The same with sign-in required (the first admin comes from tests/conftest.py)."""
    root = _root_conftest()
    s = root.start_studio(tmp_path, with_ui=True, extra_env={"VLSTUDIO_AUTH_ENABLED": "true"})
    yield s
    root.stop_studio(s)


@pytest.fixture
def screenshot():  # noqa: ANN201
    return shot


@pytest.fixture
def standalone_ui(tmp_path: Path) -> Iterator[tuple]:
    """The API (+ worker) without the UI, and ``vlstudio ui`` as its own process talking to it
    over HTTP. Yields (studio, ui_url)."""
    root = _root_conftest()
    s = root.start_studio(tmp_path, with_ui=False)
    try:
        proc, url = root.start_ui(s)
        try:
            yield s, url
        finally:
            proc.terminate()
            proc.wait(timeout=20)
    finally:
        root.stop_studio(s)
