"""Import a released-style checkpoint from the Models page in a real browser."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "worker"))
from convert_helpers import write_original  # noqa: E402

pytestmark = pytest.mark.slow


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
    # Every state the import's box shows on its way (the tiny import may take well under a second).
    page.evaluate("""() => { window.vlImportSeen = [];
        new MutationObserver(() => { const p = document.querySelector('#vl-import-progress');
            if (p) window.vlImportSeen.push(p.dataset.status + ' ' + p.innerText); })
          .observe(document.querySelector('#vl-import-msg'), {subtree: true, childList: true, characterData: true}); }""")
    page.locator("#vl-import-btn").click()
    page.locator("#vl-import-msg .vl-notice-ok", has_text="Imported").wait_for(timeout=120_000)
    seen = page.evaluate("window.vlImportSeen")
    # the import's own progress while it ran (not only Gradio's spinner), then its result
    assert seen and all("Importing Mini-InternVL-Chat-2B-V1-5" in s and "of the weights written" in s for s in seen), seen
    assert not page.locator("#vl-import-progress").count() and not page.locator("#vl-import-cancel").is_visible()
    listing = page.locator("#vl-models-list")
    listing.filter(has_text="Mini-InternVL-Chat-2B-V1-5").wait_for()
    assert "internlm2-chat" in listing.inner_text()
    screenshot(page, "02b-model-imported")
