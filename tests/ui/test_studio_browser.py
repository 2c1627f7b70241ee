"""The studio in a real browser (Debian's Chromium, headless), against a real API, Celery
worker and torchrun training of the tiny demo model: a new user's first fine-tune, and a bad
dataset. Screenshots of every page land in ``test-artifacts/screenshots/``."""

from __future__ import annotations

import json
import os
import re
import zipfile
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from backend.core.demo_data import write_zip

pytestmark = pytest.mark.slow
ADMIN_PASSWORD = os.environ["VLSTUDIO_FIRST_ADMIN_PASSWORD"]  # set by tests/conftest.py

STEPS = 20


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def upload(page, path: Path) -> None:
    page.locator("#vl-upload input[type=file]").set_input_files(str(path))
    page.locator("#vl-upload-btn").click()


def test_first_fine_tune(studio, page, screenshot, tmp_path: Path):
    page.goto(studio.url)
    page.locator("#vl-health", has_text="API connected").wait_for()

    # Datasets: upload the demo zip, read the validation report, preview a sample.
    upload(page, write_zip(tmp_path / "shapes.zip", n=24))
    page.locator("#vl-ds-result", has_text="registered").wait_for(timeout=120_000)
    summary = page.locator("#vl-ds-summary")
    assert re.search(r"samples\s*24", summary.inner_text(), re.I), summary.inner_text()
    assert "No problems found" in page.locator("#vl-ds-issues").inner_text()
    page.locator("#vl-ds-list tr[data-ds]").first.wait_for()
    screenshot(page, "01-datasets")

    open_tab(page, "Models")
    page.locator("#vl-models-list", has_text="internvl-tiny-demo").wait_for()
    screenshot(page, "02-models")

    # Train: defaults come from the server's presets; shorten the run and start it.
    open_tab(page, "Train")
    page.locator("#vl-preset-dd input").wait_for()
    lr = page.locator("#vl-hp-learning_rate input")
    lr.wait_for()
    assert float(lr.input_value()) > 0, "the learning rate was not filled from the preset"
    steps = page.locator("#vl-hp-max_steps input")
    steps.fill(str(STEPS))
    steps.press("Tab")
    screenshot(page, "03-train")
    page.locator("#vl-start").click()

    # Jobs: the job opens, its log and loss plot update while it runs, then it succeeds.
    page.locator("#vl-job-header", has_text="Job #1").wait_for(timeout=60_000)
    log = page.locator("#vl-log .vl-log-body")
    page.wait_for_function("document.querySelectorAll('#vl-log .vl-line').length > 3", timeout=240_000)
    page.locator("#vl-job-cards .vl-card-value").first.wait_for()
    page.wait_for_function(
        "!document.querySelector('#vl-job-cards').innerText.includes('no step logged')", timeout=300_000)
    first_step = _step_shown(page)
    assert page.locator("#vl-job-header .vl-badge").inner_text().strip() in ("Running", "Starting"), \
        "the job finished before the page showed it running"
    loss_points = _points(page, "vl-plot-loss")
    # Scrolling up pauses auto-scroll; new lines then wait behind the Follow button.
    log.evaluate("e => { e.scrollTop = 0; e.dispatchEvent(new Event('scroll')); }")
    page.wait_for_function(f"(() => {{ const c = document.querySelector('#vl-job-cards').innerText;"
                           f" const m = c.match(/step (\\d+)/); return m && +m[1] > {first_step}; }})()",
                           timeout=300_000)
    page.locator("#vl-log .vl-log-follow").wait_for()
    assert log.evaluate("e => e.scrollTop") == 0, "the log jumped to the end while the user read above"
    page.wait_for_function(f"(() => {{ const p = document.querySelector('#vl-plot-loss .mark-line path');"
                           f" return p && (p.getAttribute('d').match(/[ML]/g) || []).length > {loss_points}; }})()",
                           timeout=30_000)  # the loss plot grew while the job ran
    screenshot(page, "04-job-running")
    page.locator("#vl-job-header .vl-badge", has_text="Succeeded").wait_for(timeout=600_000)
    legend = page.evaluate("document.querySelector('#vl-plot-loss').textContent")
    assert "smoothed" in legend, "the loss plot drew no raw / smoothed series"
    assert f"step {STEPS:,} / {STEPS:,}" in page.locator("#vl-job-progress").inner_text()

    # Search, then download the whole log.
    page.locator("#vl-log .vl-log-follow").click()
    page.locator("#vl-log .vl-log-search").fill("| loss")
    count = page.locator("#vl-log .vl-log-count").inner_text()
    assert re.match(rf"{STEPS} of \d+ lines match", count), count
    assert page.locator("#vl-log mark").count() >= STEPS
    with page.expect_download() as dl:
        page.locator("#vl-log .vl-log-download").click()
    text = Path(dl.value.path()).read_text()
    assert f"step {STEPS}/{STEPS} | loss" in text
    page.locator("#vl-log .vl-log-search").fill("")
    page.locator("#vl-jobs-list .vl-badge", has_text="Succeeded").wait_for()  # the list refreshes itself
    screenshot(page, "05-job-succeeded")



def test_sample_preview(studio, page, screenshot, tmp_path: Path):
    """The preview of one sample, as the model sees it (``GET /api/datasets/{id}/samples/{n}``)."""
    with open(write_zip(tmp_path / "shapes.zip", n=8), "rb") as f:
        r = studio.api.post("/datasets", files={"file": ("shapes.zip", f, "application/zip")})
    assert r.status_code == 201, r.text
    page.goto(studio.url)
    page.locator("#vl-ds-list tr[data-ds]").first.click()
    page.locator("#vl-ds-summary").wait_for()
    page.locator("#vl-sample-line input").fill("3")
    page.locator("#vl-sample-btn").click()
    sample = page.locator("#vl-sample")
    sample.locator(".vl-render, .vl-notice").first.wait_for()
    assert "Sample on line 3" in sample.inner_text(), sample.inner_text()
    assert sample.locator(".vl-trained").count() > 0, "the trained answer is not highlighted"
    assert sample.locator(".vl-figure img").count() == 1, "the sample's image is not shown"
    sample.scroll_into_view_if_needed()
    screenshot(page, "07-sample-preview")

    # The meta file builder: tick the dataset, build, read the effective counts, get the JSON.
    page.locator("#vl-meta").get_by_text("Meta file builder").click()
    page.locator("#vl-meta-grid input[type=checkbox]").first.click()  # the "use" column's select-all
    page.locator("#vl-meta-btn").click()
    page.locator("#vl-meta-out", has_text="total").wait_for()
    assert '"repeat_time": 1' in page.locator("#vl-meta-json").inner_text()
    screenshot(page.locator("#vl-meta"), "08-meta-builder")


def _grid_row(page, name: str) -> int:
    """The index of the meta builder's row for a dataset (Gradio's dataframe: ``cell-ROW-COL``)."""
    rows = page.locator("#vl-meta-grid div[role=row][data-index]")
    rows.first.wait_for()
    names = [page.locator(f"#vl-meta-grid [data-testid='cell-{i}-2']").inner_text().strip()
             for i in range(rows.count())]
    assert name in names, names
    return names.index(name)


def _edit_cell(page, row: int, column: int, value: str) -> None:
    """Type a value into one cell, as a user does (double-click, type, Enter)."""
    cell = page.locator(f"#vl-meta-grid [data-testid='cell-{row}-{column}']")
    cell.dblclick()
    box = cell.locator("textarea[aria-label='Edit cell']")
    box.fill(value)
    box.press("Enter")
    page.wait_for_function(f"document.querySelector(\"#vl-meta-grid [data-testid='cell-{row}-{column}']\")"
                           f".innerText.includes('{value}')")


def test_train_page_trains_on_the_meta_builders_mixture(studio, page, screenshot, tmp_path: Path):
    """The meta builder feeds the Train page (issue 17): two datasets, one repeated twice with its
    own tile budget, the other sampled at half; the job records that mixture and shows it; the
    Evaluate tab scores the base model on that mixture's held-out parts, per dataset and overall."""
    for name, n, held_out in (("dots", 6, "0.34"), ("bars", 4, "0.25")):  # 4 + 2 and 3 + 1
        with open(write_zip(tmp_path / f"{name}.zip", n=n, seed=n), "rb") as f:
            r = studio.api.post("/datasets", files={"file": (f"{name}.zip", f, "application/zip")},
                                data={"name": name, "val_fraction": held_out})
        assert r.status_code == 201, r.text
    page.goto(studio.url)
    page.locator("#vl-ds-list tr[data-ds]", has_text="bars").wait_for()
    page.locator("#vl-meta").get_by_text("Meta file builder").click()
    for name, repeat, tiles in (("dots", "2", "1"), ("bars", "0.5", None)):
        row = _grid_row(page, name)
        page.locator(f"#vl-meta-grid [data-testid='cell-{row}-0'] input[type=checkbox]").check()
        _edit_cell(page, row, 3, repeat)
        if tiles:
            _edit_cell(page, row, 5, tiles)
    page.locator("#vl-meta-btn").click()
    page.locator("#vl-meta-out", has_text="total").wait_for()
    meta = json.loads(page.locator("#vl-meta-json .cm-content").text_content())
    assert {k: (v["repeat_time"], v.get("max_dynamic_patch")) for k, v in meta.items()} == {
        "dots": (2, 1), "bars": (0.5, None)}, meta
    screenshot(page.locator("#vl-meta"), "09-meta-builder-mixture")

    open_tab(page, "Train")
    page.locator("#vl-hp-learning_rate input").wait_for()
    page.locator("#vl-data-source").get_by_text("Mixture").click()
    steps = page.locator("#vl-hp-max_steps input")
    steps.fill("1")
    steps.press("Tab")
    page.locator("#vl-start").click()
    page.locator("#vl-job-header", has_text="Job #1").wait_for(timeout=60_000)
    job = studio.api.get("/jobs/1").json()
    rows = {r["name"]: r for r in job["mixture"]["datasets"]}
    assert {k: (r["repeat_time"], r["max_dynamic_patch"], r["samples"]) for k, r in rows.items()} == {
        "dots": (2, 1, 8), "bars": (0.5, None, 1)}, job["mixture"]
    page.get_by_text("Spec, command line and run folder").click()
    shown = page.locator("#vl-job-mixture").text_content()
    assert "dots" in shown and "bars" in shown and "8" in shown, shown
    screenshot(page, "10-job-mixture")
    assert studio.api.post("/jobs/1/cancel").status_code == 200  # its training is not what this checks

    open_tab(page, "Evaluate")
    page.locator("#vl-eval-refresh").click()
    page.locator("#vl-eval-dataset input").click()
    page.get_by_role("option", name="mixture of job 1:").click()
    page.locator("#vl-eval-models").get_by_text("internvl-tiny-demo (base)").click()
    page.locator("#vl-eval-run").click()
    page.locator("#vl-eval-msg .vl-notice-ok", has_text="queued").wait_for()
    page.locator("#vl-eval-summary .vl-badge", has_text=re.compile("Succeeded|Failed")).wait_for(timeout=300_000)
    summary = page.locator("#vl-eval-summary").inner_text()
    assert "Succeeded" in summary, summary
    for text in ("overall (every sample once)", "exact_match · dots", "(n=2)", "exact_match · bars", "(n=1)",
                 "INTERNVL-TINY-DEMO (N=3)"):  # the header is upper-cased by the theme
        assert text in summary, (text, summary)
    page.get_by_text("Only samples where the models differ").click()  # one model: no differences
    page.locator("#vl-eval-samples th", has_text="Dataset").wait_for()
    assert page.locator("#vl-eval-samples tbody tr").count() == 3
    screenshot(page, "11-eval-mixture")

    # a benchmark suite (issue 23): a registered tiny DocVQA, one table and its CSV/JSON files
    from backend.core.benchmarks import register_benchmark
    from tests.eval.benchmark_layouts import write_docvqa

    write_docvqa(tmp_path / "docvqa")
    register_benchmark("docvqa_val", tmp_path / "docvqa", studio.data_dir / "benchmarks")
    page.locator("#vl-eval-refresh").click()
    page.locator("#vl-eval-dataset input").click()
    page.get_by_role("option", name="Benchmark suite").click()
    page.locator("#vl-eval-benchmarks").get_by_text("DocVQA val (docvqa_val, 3 samples)").click()
    page.locator("#vl-eval-run").click()
    page.locator("#vl-eval-msg .vl-notice-ok", has_text="queued").wait_for()
    page.locator("#vl-eval-summary .vl-suite-table, #vl-eval-summary .vl-notice-error").first.wait_for(
        timeout=300_000)
    summary = page.locator("#vl-eval-summary").inner_text()
    assert "Benchmark suite: docvqa_val" in summary and "anls (%)" in summary and "DocVQA val" in summary, summary
    suite = studio.api.get("/evaluations").json()[0]
    assert suite["benchmarks"]["request"] == {"benchmarks": ["docvqa_val"]} and suite["metrics"] == []
    (row,) = studio.api.get(f"/evaluations/{suite['id']}/table").json()["rows"]
    assert f"{row['published'][0]:.1f}" in summary, (row, summary)
    for fmt in ("csv", "json"):  # the files offered are the API's exports
        with page.expect_download() as got:
            page.locator(f"#vl-eval-table-files a[download='evaluation-{suite['id']}-table.{fmt}']").click()
        exported = studio.api.get(f"/evaluations/{suite['id']}/table", params={"format": fmt}).text
        assert Path(got.value.path()).read_text() == exported and "docvqa_val" in exported
    screenshot(page, "12-eval-suite")


def _step_shown(page) -> int:
    m = re.search(r"step (\d+)", page.locator("#vl-job-cards").inner_text())
    assert m, page.locator("#vl-job-cards").inner_text()
    return int(m.group(1))


def _points(page, elem_id: str) -> int:
    """Points drawn by a Vega line plot (its SVG path has one command per point)."""
    d = page.evaluate(f"""(() => {{ const p = document.querySelector('#{elem_id} .mark-line path');
                          return p ? p.getAttribute('d') : ''; }})()""")
    return len(re.findall(r"[ML]", d or ""))


def bad_zip(path: Path) -> Path:
    good = {"id": 1, "image": "a.png", "conversations": [{"from": "human", "value": "<image>\nWhat?"},
                                                          {"from": "gpt", "value": "A square."}]}
    lines = [json.dumps(good), "{not json", json.dumps({**good, "id": 3, "image": "missing.png"})]
    from PIL import Image

    img = path.parent / "a.png"
    Image.new("RGB", (64, 64), "red").save(img)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("data.jsonl", "\n".join(lines) + "\n")
        z.write(img, "a.png")
    return path


# What of a labelled box (upload, image) is not seen whole: an icon or a text under the box's
# floating label, or past the box's edge (Gradio cuts it off). Leaves only: the box's own wrappers
# lie under its label by design.
HIDDEN_PARTS = """(id) => {
  const box = document.getElementById(id).getBoundingClientRect();
  const label = document.querySelector('#' + id + ' [data-testid=block-label]').getBoundingClientRect();
  const hidden = [];
  for (const e of document.querySelectorAll('#' + id + ' *')) {
    if (e.closest('[data-testid=block-label]') || !(e.tagName === 'svg' || (!e.children.length && e.innerText && e.innerText.trim()))) continue;
    const r = e.getBoundingClientRect();
    if (!r.width || !r.height || getComputedStyle(e).visibility === 'hidden') continue;
    const under = r.top < label.bottom && r.bottom > label.top && r.left < label.right && r.right > label.left;
    if (under || r.bottom > box.bottom + 1 || r.right > box.right + 1) hidden.push((e.innerText || e.tagName).trim());
  }
  return hidden; }"""


def test_bad_dataset_shows_errors_with_line_numbers(studio, page, screenshot, tmp_path: Path):
    page.goto(studio.url)
    page.locator("#vl-health", has_text="API connected").wait_for()
    # labels not clipped, nothing under them (issue 25): the upload boxes here, the image on the Playground
    for box in ("vl-upload", "vl-ds-val-file"):
        assert page.evaluate(HIDDEN_PARTS, box) == [], box
    open_tab(page, "Playground")
    page.locator("#vl-chat-image").wait_for()
    assert page.evaluate(HIDDEN_PARTS, "vl-chat-image") == []
    open_tab(page, "Datasets")
    upload(page, bad_zip(tmp_path / "broken.zip"))
    result = page.locator("#vl-ds-result")
    result.locator(".vl-notice-error").wait_for(timeout=120_000)
    text = result.inner_text()
    assert "rejected" in text
    assert "line 2" in text and "line 3" in text, text
    assert "missing.png" in text
    assert page.locator("#vl-ds-list", has_text="No datasets yet").count() == 1
    screenshot(page, "06-bad-dataset")


def test_sign_in_when_users_are_enabled(studio_with_users, page, screenshot):
    page.goto(studio_with_users.url)
    page.locator("#vl-login").wait_for()
    assert not page.locator("#vl-main").is_visible(), "the studio showed before sign-in"
    page.locator("#vl-login-user textarea, #vl-login-user input").fill("admin")
    page.locator("#vl-login-password input, #vl-login-password textarea").fill("wrong")
    page.locator("#vl-login-btn").click()
    page.locator("#vl-login-msg .vl-notice-error").wait_for()
    screenshot(page, "00-sign-in")
    page.locator("#vl-login-password input, #vl-login-password textarea").fill(ADMIN_PASSWORD)
    page.locator("#vl-login-btn").click()
    page.locator("#vl-user", has_text="admin").wait_for()
    page.locator("#vl-ds-list", has_text="No datasets yet").wait_for()
    page.reload()  # the browser keeps the session's token
    page.locator("#vl-user", has_text="admin").wait_for()
    page.locator("#vl-signout").click()
    page.locator("#vl-login").wait_for()


def test_ui_runs_as_its_own_service(standalone_ui, page, screenshot):
    """``vlstudio ui`` apart from the API: everything goes over HTTP to VLSTUDIO_API_URL."""
    studio, ui_url = standalone_ui
    page.goto(ui_url)
    page.locator("#vl-health", has_text="API connected").wait_for()
    # through the UI server's own upload route (ui/serve.py: the API, which needs no login here, says yes)
    upload(page, write_zip(studio.data_dir.parent / "few.zip", n=4))
    page.locator("#vl-ds-result", has_text="registered").wait_for(timeout=120_000)
    page.locator("#vl-ds-list tr[data-ds]", has_text="few").wait_for()


def test_the_page_follows_the_url_and_the_job_live(studio, page, screenshot, tmp_path: Path):
    """Issue 25, in one browser session. The URL holds the tab, the open job and the open
    evaluation (?tab=..&job=N&evaluation=M): a reload, a pasted link, Back and Forward land where
    the user was. The open job follows the API's event stream: a line appended to the running
    job's log reaches the page with no request of the page's after the job opened but the jobs
    list's own refresh (a timer polling the job would show up as requests). An upload works
    with a query string in the URL (Gradio resolves its upload route without it)."""
    with studio.api as api:
        r = api.post("/datasets/demo", params={"samples": 8})
        assert r.status_code in (200, 201), r.text
        ds = r.json()["id"]
        ids = []
        for steps in (100_000, 2):  # the first runs until cancelled, the second waits behind it
            r = api.post("/jobs", json={"dataset_id": ds, "model_id": 1, "preset": "demo",
                                        "hyperparameters": {"max_steps": steps}})
            assert r.status_code == 201, r.text
            ids.append(r.json()["id"])
        r = api.post("/evaluations", json={"dataset_id": ds, "split": "train", "models": [{"model_id": 1}],
                                           "metrics": ["exact_match"]})
        assert r.status_code == 201, r.text
        ev = r.json()["id"]
    calls: list[int] = []  # the fn_index of every Gradio event the page sends
    page.on("request", lambda req: calls.append(json.loads(req.post_data or "{}").get("fn_index"))
            if req.method == "POST" and urlsplit(req.url).path.endswith("/queue/join") else None)
    names = {d["id"]: d.get("api_name") for d in httpx.get(f"{studio.url}/config", timeout=30).json()["dependencies"]}
    page.set_default_timeout(90_000)  # a page load stalls the browser for 20-30 s on a loaded 2-core machine
    page.goto(studio.url)
    page.locator("#vl-health", has_text="API connected").wait_for()
    open_tab(page, "Jobs")
    page.wait_for_function("new URL(location.href).searchParams.get('tab') === 'jobs'")
    page.locator(f"#vl-jobs-list [data-job='{ids[0]}']").click()
    page.locator("#vl-job-header", has_text=f"Job #{ids[0]}").wait_for(timeout=60_000)
    page.wait_for_function(f"new URL(location.href).searchParams.get('job') === '{ids[0]}'")

    # live: the running job's log file gets a line; the page shows it, pushed by the job's stream
    log = Path(studio.wait_job_running(ids[0])["run_dir"]) / "training_log.txt"
    page.locator("#vl-log .vl-line").first.wait_for(timeout=60_000)  # the follow handler runs
    before = len(calls)
    with open(log, "a", encoding="utf-8") as f:
        f.write("appended by the test after the page opened\n")
    page.locator("#vl-log .vl-line", has_text="appended by the test after the page opened").wait_for(timeout=60_000)
    assert {names.get(i) for i in calls[before:]} <= {"jobs_list"}, [names.get(i) for i in calls[before:]]
    with studio.api as api:  # the rest needs no running job (and a loaded browser draws less)
        assert api.post(f"/jobs/{ids[0]}/cancel").status_code == 200
    page.locator("#vl-job-header [data-status='cancelled']").wait_for(timeout=120_000)  # the stream's end

    page.reload()
    page.locator("#vl-job-header", has_text=f"Job #{ids[0]}").wait_for(timeout=60_000)
    assert page.get_by_role("tab", name="Jobs").get_attribute("aria-selected") == "true"
    screenshot(page, "deep-link-reload")
    # Back and Forward: each tab and the open evaluation is a step in the history
    open_tab(page, "Evaluate")
    page.wait_for_function("new URL(location.href).searchParams.get('tab') === 'evaluate'")
    page.goto(f"{studio.url.rstrip('/')}/?tab=evaluate&evaluation={ev}")  # a pasted link to an evaluation
    page.locator("#vl-eval-summary", has_text=f"Evaluation #{ev}").wait_for(timeout=60_000)
    open_tab(page, "Models")
    page.wait_for_function("new URL(location.href).searchParams.get('tab') === 'models'")
    page.go_back()
    page.wait_for_function("new URL(location.href).searchParams.get('tab') === 'evaluate'")
    page.wait_for_function("document.querySelector('#vl-tab-evaluate') && "
                           "document.querySelector('#vl-tab-evaluate').offsetParent !== null")
    assert page.get_by_role("tab", name="Evaluate").get_attribute("aria-selected") == "true"
    page.locator("#vl-eval-summary", has_text=f"Evaluation #{ev}").wait_for(timeout=60_000)
    page.go_forward()
    page.wait_for_function("new URL(location.href).searchParams.get('tab') === 'models'")
    page.wait_for_function("document.querySelector('[role=tab][aria-selected=true]').textContent.includes('Models')")
    page.goto(f"{studio.url.rstrip('/')}/?tab=jobs&job={ids[1]}")  # a pasted link to the other job
    page.locator("#vl-job-header", has_text=f"Job #{ids[1]}").wait_for(timeout=60_000)
    page.locator(f"#vl-jobs-list [data-job='{ids[0]}']").click()
    page.locator("#vl-job-header", has_text=f"Job #{ids[0]}").wait_for(timeout=60_000)
    page.go_back()  # the job opened before, in the same page
    page.wait_for_function(f"new URL(location.href).searchParams.get('job') === '{ids[1]}'")
    page.locator("#vl-job-header", has_text=f"Job #{ids[1]}").wait_for(timeout=60_000)
    # an upload with a query string in the URL
    open_tab(page, "Datasets")
    page.wait_for_function("new URL(location.href).searchParams.get('tab') === 'datasets'")
    upload(page, write_zip(tmp_path / "shapes.zip", n=4))
    page.locator("#vl-ds-result", has_text="registered").wait_for(timeout=120_000)