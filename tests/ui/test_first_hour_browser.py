"""The studio's first hour in a real browser (Debian's Chromium): every action ends in visible
feedback. Upload with a held-out split, bad lines and the token check; evaluation feedback
and live results; a multi-turn chat with messages queued while a reply streams; two runs
compared side by side. One studio for the module (API + UI + a Celery worker), two short
training jobs submitted at the start so that they train while the other flows run."""

from __future__ import annotations

import io
import json
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from backend.core.demo_data import generate

pytestmark = pytest.mark.slow
STEPS = 4


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def pick(page, elem_id: str, option: str) -> None:
    """Choose ``option`` in a Gradio dropdown."""
    page.locator(f"#{elem_id} input").click()
    page.get_by_role("option", name=re.compile(re.escape(option))).first.click()


def zip_with_problems(path: Path, n: int = 12) -> Path:
    """``n`` demo samples, one whose answer is far longer than max_seq_length (training truncates
    it) and one line that is not JSON."""
    samples = generate(n, seed=3)
    lines = [json.dumps(r) for _, _, r in samples]
    long = dict(samples[0][2], id="long")
    long["conversations"] = [long["conversations"][0], {"from": "gpt", "value": "red square " * 1500}]
    lines.insert(4, json.dumps(long))  # line 5
    lines.insert(7, '{"id": "broken", "conversations": [')  # line 8
    with zipfile.ZipFile(path, "w") as z:
        for name, data, _ in samples:
            z.writestr(name, data)
        z.writestr("annotations.jsonl", "\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def hour(tmp_path_factory, browser) -> Iterator[dict]:
    """The studio, a dataset with a held-out split and two short jobs (different learning
    rates) already submitted."""
    from tests.ui.conftest import _root_conftest
    from worker.demo_model import ensure_demo_model

    root = _root_conftest()
    tmp = tmp_path_factory.mktemp("hour")
    studio = root.start_studio(tmp, with_ui=True)
    try:
        ensure_demo_model(studio.data_dir / "models")  # the tokenizer the upload's token check uses
        with studio.api as api:
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w") as z:
                samples = generate(16, seed=1)
                for name, data, _ in samples:
                    z.writestr(name, data)
                z.writestr("annotations.jsonl", "".join(json.dumps(r) + "\n" for _, _, r in samples))
            r = api.post("/datasets", files={"file": ("shapes.zip", buf.getvalue(), "application/zip")},
                         data={"val_fraction": "0.25", "name": "shapes-held-out"})
            assert r.status_code == 201, r.text
            ds = r.json()["id"]
            jobs = []
            for lr in (1e-4, 3e-4):
                r = api.post("/jobs", json={"dataset_id": ds, "model_id": 1, "preset": "demo", "hyperparameters": {
                    "max_steps": STEPS, "learning_rate": lr, "logging_steps": 1, "eval_steps": 2}})
                assert r.status_code == 201, r.text
                jobs.append(r.json()["id"])
        yield {"studio": studio, "dataset": ds, "jobs": jobs}
    finally:
        root.stop_studio(studio)


@pytest.fixture
def studio_page(hour, page):
    page.goto(hour["studio"].url)
    page.locator("#vl-health", has_text="API connected").wait_for()
    return page


def test_upload_with_held_out_split_bad_lines_and_token_check(hour, studio_page, screenshot, tmp_path: Path):
    page = studio_page
    page.locator("#vl-upload input[type=file]").set_input_files(str(zip_with_problems(tmp_path / "mixed.zip")))
    pick(page, "vl-ds-check-model", "internvl-tiny-demo")
    assert page.locator("#vl-ds-max-len input").input_value() == "2048", "max_seq_length is not the preset's"
    page.locator("#vl-ds-val-fraction input[type=number]").fill("0.25")
    page.locator("#vl-ds-val-fraction input[type=number]").press("Enter")
    page.locator("#vl-upload-btn").click()

    # Refused: every problem with its line, and the way out the page offers.
    result = page.locator("#vl-ds-result")
    result.locator(".vl-notice-error").wait_for(timeout=120_000)
    text = result.inner_text()
    assert "Drop the lines with errors" in text and "line 8" in text, text
    assert "at at" not in text
    screenshot(page, "h1-upload-refused")

    page.locator("#vl-ds-drop input").check()
    page.locator("#vl-upload-btn").click()
    result.locator(".vl-notice-ok").wait_for(timeout=120_000)
    text = result.inner_text()
    # 13 lines pass (12 + the long one); a quarter is held out.
    assert re.search(r"registered as #\d+", text), text
    assert "held out as the validation split" in text, text
    assert "longer than max_seq_length" in text and "Line 5 " in text, text
    screenshot(page, "h2-upload-held-out")


def test_evaluation_feedback_and_live_results(hour, studio_page, screenshot):
    page = studio_page
    studio = hour["studio"]
    with studio.api as api:  # a dataset with no validation split: the refusal must show
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            samples = generate(4, seed=2)
            for name, data, _ in samples:
                z.writestr(name, data)
            z.writestr("annotations.jsonl", "".join(json.dumps(r) + "\n" for _, _, r in samples))
        assert api.post("/datasets", files={"file": ("no-split.zip", buf.getvalue(), "application/zip")},
                        data={"name": "no-split"}).status_code == 201
    open_tab(page, "Evaluate")
    page.locator("#vl-eval-run").click()  # nothing chosen
    page.locator("#vl-eval-msg .vl-notice-error", has_text="Choose a dataset").wait_for()

    pick(page, "vl-eval-dataset", "no-split")
    page.locator("#vl-eval-models").get_by_text("internvl-tiny-demo (base)").click()
    page.locator("#vl-eval-run").click()
    refusal = page.locator("#vl-eval-msg .vl-notice-error", has_text="no validation split")
    refusal.wait_for()
    assert "split" in refusal.inner_text(), refusal.inner_text()  # the field the API named
    screenshot(page, "h3-eval-refused")

    pick(page, "vl-eval-dataset", "shapes-held-out")
    page.locator("#vl-eval-run").click()
    queued = page.locator("#vl-eval-msg .vl-notice-ok", has_text="queued")
    queued.wait_for()
    ev_id = re.search(r"#(\d+)", queued.inner_text()).group(1)
    assert ev_id in page.locator("#vl-eval-pick input").input_value(), "the new run is not selected"
    # Without touching Refresh: the summary follows the run to the end.
    page.locator("#vl-eval-summary .vl-badge", has_text="Succeeded").wait_for(timeout=900_000)  # after the jobs
    assert queued.is_visible(), "the queued notice was wiped"
    summary = page.locator("#vl-eval-summary").inner_text()
    assert "exact_match" in summary and "(n=4)" in summary.lower(), summary
    assert "succeeded" in page.locator("#vl-eval-pick input").input_value()
    screenshot(page, "h4-eval-live-done")


def test_multi_turn_chat_queues_messages_while_streaming(hour, studio_page, screenshot, tmp_path: Path):
    page = studio_page
    open_tab(page, "Playground")
    image = tmp_path / "shape.png"
    image.write_bytes(generate(1, seed=5)[0][1])
    page.locator("#vl-chat-image input[type=file]").set_input_files(str(image))
    page.locator("#vl-chat-image img").wait_for()
    box = page.locator("#vl-chat-text textarea, #vl-chat-text input")
    box.fill("What colour is the shape?")
    page.locator("#vl-chat-send").click()  # no model chosen
    page.locator("#vl-chat-status .vl-notice-error", has_text="Choose a model first").wait_for()
    assert box.input_value() == "What colour is the shape?", "the message was lost"

    pick(page, "vl-chat-model", "internvl-tiny-demo (base)")
    page.locator("#vl-chat-send").click()
    page.locator("#vl-chat [data-testid=bot], #vl-chat .bot").first.wait_for(timeout=60_000)
    box.fill("And what shape is it?")  # sent while the first reply is on its way
    box.press("Enter")
    page.locator("#vl-chat-status", has_text="Queued").wait_for(timeout=10_000)
    assert box.input_value() == ""
    answered = ("(() => { const t = document.querySelector('#vl-chat-status').innerText.toLowerCase();"
                " return t.includes('answered in') && !t.includes('queued'); })()")
    page.wait_for_function(answered, timeout=300_000)  # both replies, in order
    box.fill("Thanks. Is it large?", timeout=90_000)  # a third turn; a loaded CI browser may lag
    box.press("Enter")
    page.locator("#vl-chat", has_text="Is it large?").wait_for()
    page.wait_for_function(answered, timeout=300_000)
    page.wait_for_timeout(1500)
    chat = page.locator("#vl-chat").inner_text()
    for asked in ("What colour is the shape?", "And what shape is it?", "Is it large?"):
        assert chat.count(asked) == 1, chat
    assert "not answered" not in chat and "invalid request" not in chat, chat
    assert page.locator("#vl-chat-status .vl-notice-error").count() == 0
    screenshot(page, "h5-chat-three-turns")

    # Stop: the reply ends, and a message queued behind it comes back to the box.
    longest = page.locator("#vl-chat-max-new input[type=number]")
    longest.fill("4096")  # a reply long enough to still stream when the next message is sent
    longest.press("Enter")
    box.fill("Describe the image in detail.")
    box.press("Enter")
    page.wait_for_function("document.querySelector('#vl-chat-text textarea').value === ''")
    box.fill("One more question")  # at once: it waits behind the reply to the first
    box.press("Enter")
    page.locator("#vl-chat-status", has_text="Queued").wait_for(timeout=30_000)
    page.locator("#vl-chat-stop").click()
    page.locator("#vl-chat-status", has_text="Stopped").wait_for()
    assert box.input_value() == "One more question", "the queued message was lost"
    assert "One more question" not in page.locator("#vl-chat").inner_text()
    page.locator("#vl-chat", has_text="(stopped)").wait_for()


def test_runs_compare_side_by_side(hour, studio_page, screenshot):
    page = studio_page
    studio = hour["studio"]
    a, b = hour["jobs"]
    for j in (a, b):
        assert studio.wait_job(j, timeout=900)["status"] == "succeeded", studio.worker_log()
    with studio.api as api:
        r = api.post("/evaluations", json={"dataset_id": hour["dataset"], "split": "validation",
                                           "models": [{"model_id": 1}, {"job_id": a}, {"job_id": b}]})
        assert r.status_code == 201, r.text
        ev = r.json()["id"]
    open_tab(page, "Compare")
    page.locator("#vl-cmp-btn").click()
    page.locator("#vl-cmp-msg .vl-notice-error", has_text="at least two").wait_for()
    pick(page, "vl-cmp-pick", f"job {a} ")
    pick(page, "vl-cmp-pick", f"job {b} ")
    page.locator("#vl-cmp-btn").click()
    page.locator("#vl-cmp-diff", has_text="learning_rate").wait_for()
    diff = page.locator("#vl-cmp-diff").inner_text()
    assert "0.0001" in diff and "0.0003" in diff, diff
    assert "max_steps" not in diff, "a setting both runs share is listed as differing"
    for key in ("loss", "learning_rate", "eval_loss"):
        page.wait_for_function(f"document.querySelectorAll('#vl-cmp-{key} .mark-line path').length >= 2",
                               timeout=30_000)  # one line per job
    # Evaluation scores side by side, once the evaluation has run.
    studio_wait_evaluation(studio, ev)
    page.locator("#vl-cmp-btn").click()
    scores = page.locator("#vl-cmp-scores")
    scores.locator("table").wait_for()
    text = scores.inner_text().lower()  # the table headers are upper-cased by CSS
    assert f"job {a}" in text and f"job {b}" in text and "internvl-tiny-demo" in text, text
    screenshot(page, "h6-compare")


def studio_wait_evaluation(studio, ev: int, timeout: float = 600) -> None:
    import time

    deadline = time.monotonic() + timeout
    with studio.api as api:
        while time.monotonic() < deadline:
            status = api.get(f"/evaluations/{ev}").json()["status"]
            if status in ("succeeded", "failed", "cancelled"):
                assert status == "succeeded", api.get(f"/evaluations/{ev}").json()
                return
            time.sleep(1)
    raise AssertionError(f"evaluation {ev} did not finish")
