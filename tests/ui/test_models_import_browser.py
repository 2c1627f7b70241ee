"""Import a released-style checkpoint from the Models page in a real browser."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "worker"))
from convert_helpers import write_original  # noqa: E402

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def _root_conftest():  # noqa: ANN202
    """tests/conftest.py by path, under the same module name tests/ui/conftest.py uses."""
    import importlib.util

    name = "vlstudio_root_conftest"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "tests" / "conftest.py")
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


@pytest.fixture
def studio_with_roots(tmp_path: Path, monkeypatch):  # noqa: ANN201
    root = _root_conftest()
    monkeypatch.setenv("VLSTUDIO_DATA_ROOTS", str(tmp_path / "shared"))
    s = root.start_studio(tmp_path, with_ui=True)
    yield s
    root.stop_studio(s)


def test_import_a_checkpoint_from_the_models_page(studio_with_roots, page, screenshot, tmp_path: Path):
    write_original(tmp_path / "shared" / "Mini-InternVL-Chat-2B-V1-5", "internlm2")
    page.goto(studio_with_roots.url)
    page.get_by_role("tab", name="Models").click()
    page.locator("#vl-models-list", has_text="internvl-tiny-demo").wait_for()

    page.locator("#vl-import-path textarea, #vl-import-path input").first.fill(str(tmp_path / "nowhere"))
    page.locator("#vl-import-btn").click()
    page.locator("#vl-import-msg .vl-notice-error", has_text="not imported").wait_for(timeout=60_000)

    page.locator("#vl-import-path textarea, #vl-import-path input").first.fill(
        str(tmp_path / "shared" / "Mini-InternVL-Chat-2B-V1-5"))
    page.locator("#vl-import-btn").click()
    page.locator("#vl-import-msg .vl-notice-ok", has_text="Imported").wait_for(timeout=120_000)
    listing = page.locator("#vl-models-list")
    listing.filter(has_text="Mini-InternVL-Chat-2B-V1-5").wait_for()
    assert "internlm2-chat" in listing.inner_text()
    screenshot(page, "02b-model-imported")
