"""Live-view lag of the Jobs page, in a real browser (issue 25): from a line written to a running
job's ``training_log.txt`` to the same line in the page's log viewer, and from a step row written
to its ``metrics.jsonl`` to that step's point in the page's loss plot.

Starts a studio as real processes (API with the UI mounted, one worker; the embedded mode, or
``--broker redis://...``), trains the demo model on the demo dataset, opens the job in Debian's
Chromium (headless, through Playwright, as the browser tests do) by its deep link, and records:

- on the machine: when each new line of the run's two files is first seen (the files are polled
  every 10 ms, so a figure is at most that late);
- in the page: when each log line node is added to ``#vl-log`` and when the loss plot's raw
  series (Vega's SVG path) first has k points (MutationObservers, ``Date.now()``, same clock).

Only lines and rows written after the page was open count. Prints p50 / p95 / max and the
machine's contention (wall seconds per CPU second of a busy loop: 1.0 is an idle core).

    .venv/bin/python bench/ui_lag.py                # ~2-3 minutes
    .venv/bin/python bench/ui_lag.py --load 2       # with two busy-loop processes beside it
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.validate import contention  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
ADMIN = ("admin", "admin-password-for-bench")
RAW_LOSS_COLOUR = "#c7d2fe"  # ui/pages/jobs.py colour_map of the raw loss series

OBSERVE_JS = """(colour) => {
  window.__lag = {lines: [], points: []};
  const body = document.querySelector('#vl-log .vl-log-body');
  new MutationObserver((ms) => { const t = Date.now();
    for (const m of ms) for (const n of m.addedNodes)
      if (n.classList && n.classList.contains('vl-line')) window.__lag.lines.push([n.textContent, t]);
  }).observe(body, {childList: true});
  const plot = document.querySelector('#vl-plot-loss');
  let seen = 0;
  const count = () => { const p = plot.querySelector(`path[stroke="${colour}"]`);
    return p ? (p.getAttribute('d').match(/[ML]/g) || []).length : 0; };
  seen = count();
  new MutationObserver(() => { const t = Date.now(), n = count();
    if (n > seen) { for (let k = seen + 1; k <= n; k++) window.__lag.points.push([k, t]); seen = n; }
  }).observe(plot, {childList: true, subtree: true, attributes: true});
  return seen;
}"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_studio(root: Path, broker: str | None) -> tuple[str, list[subprocess.Popen], dict[str, str]]:
    port = free_port()
    env = {**os.environ, "VLSTUDIO_DATA_DIR": str(root / "data"), "VLSTUDIO_PORT": str(port),
           "VLSTUDIO_HOST": "127.0.0.1", "VLSTUDIO_SECRET_KEY": "bench-" + uuid.uuid4().hex,
           "VLSTUDIO_FIRST_ADMIN_USERNAME": ADMIN[0], "VLSTUDIO_FIRST_ADMIN_PASSWORD": ADMIN[1],
           "VLSTUDIO_INDEX_CACHE": str(root / "index-cache"), "TRITON_INTERPRET": "1"}
    env.pop("VLSTUDIO_DATABASE_URL", None)
    env.pop("VLSTUDIO_BROKER_URL", None)
    if broker:
        env["VLSTUDIO_BROKER_URL"] = broker
    (root / "data").mkdir(parents=True)
    cli = [sys.executable, "-m", "backend.cli"]
    subprocess.run([*cli, "migrate"], env=env, check=True, cwd=REPO, capture_output=True)
    log = open(root / "studio.log", "ab")  # noqa: SIM115 - the processes' own log, open for their life
    procs = [subprocess.Popen([*cli, "api", "--with-ui"], env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT),
             subprocess.Popen([*cli, "worker", "--hostname", f"bench-{port}@%h"], env=env, cwd=REPO, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)]
    url = f"http://127.0.0.1:{port}"
    for _ in range(180):
        try:
            if httpx.get(url + "/api/health", timeout=2).status_code == 200:
                return url, procs, env
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit("the API did not start:\n" + (root / "studio.log").read_text()[-3000:])


class Tail(threading.Thread):
    """When each complete line of a file is first seen (polled every 10 ms)."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path, self.seen, self.stop = path, [], threading.Event()

    def run(self) -> None:
        offset, rest = 0, b""
        while not self.stop.is_set():
            if self.path.exists():
                with open(self.path, "rb") as f:
                    f.seek(offset)
                    chunk = f.read()
                offset += len(chunk)
                t = time.time()
                *lines, rest = (rest + chunk).split(b"\n")
                self.seen.extend((line.decode("utf-8", "replace"), t) for line in lines)
            time.sleep(0.01)


def lags(pairs: list[float]) -> str:
    if not pairs:
        return "n=0"
    q = statistics.quantiles(pairs, n=20) if len(pairs) > 1 else [pairs[0]] * 19
    return f"n={len(pairs)}  p50 {statistics.median(pairs):.2f} s  p95 {q[18]:.2f} s  max {max(pairs):.2f} s"


def busy() -> None:
    while True:
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=150, help="max_steps of the demo job")
    ap.add_argument("--seconds", type=float, default=90, help="how long to watch once the page is open")
    ap.add_argument("--load", type=int, default=0, help="busy-loop processes running beside it")
    ap.add_argument("--broker", default=None, help="e.g. redis://127.0.0.1:6379/4 (default: embedded)")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    root = Path(tempfile.mkdtemp(prefix="vlstudio-ui-lag-"))
    url, procs, _ = start_studio(root, args.broker)
    hogs = [multiprocessing.Process(target=busy, daemon=True) for _ in range(args.load)]
    try:
        token = httpx.post(url + "/api/auth/login", json=dict(zip(("username", "password"), ADMIN, strict=True)),
                           timeout=60).json()["access_token"]
        api = httpx.Client(base_url=url + "/api", headers={"Authorization": f"Bearer {token}"}, timeout=60)
        ds = api.post("/datasets/demo", params={"samples": 16}).json()["id"]
        job = api.post("/jobs", json={"dataset_id": ds, "model_id": 1, "preset": "demo",
                                      "hyperparameters": {"max_steps": args.steps}}).json()["id"]
        for _ in range(2400):  # until the trainer logs steps: start-up is not what is measured
            j = api.get(f"/jobs/{job}").json()
            if j.get("step") or j["status"] in ("failed", "succeeded", "cancelled"):
                break
            time.sleep(0.5)
        if not j.get("step"):
            raise SystemExit(f"job {job} did not reach a step: {j['status']} {j.get('failure_reason')}")
        run = Path(j["run_dir"])
        for h in hogs:
            h.start()
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox",
                                                                         "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1360, "height": 900})
            page.set_default_timeout(120_000)
            page.goto(f"{url}/?tab=jobs&job={job}")
            page.locator("#vl-job-header", has_text=f"Job #{job}").wait_for()
            page.locator("#vl-plot-loss svg").wait_for()
            page.evaluate(OBSERVE_JS, RAW_LOSS_COLOUR)
            t0 = time.time()
            logs, metrics = Tail(run / "training_log.txt"), Tail(run / "metrics.jsonl")
            logs.start()
            metrics.start()
            while time.time() - t0 < args.seconds and api.get(f"/jobs/{job}").json()["status"] not in (
                    "succeeded", "failed", "cancelled"):
                time.sleep(1)
            time.sleep(3)  # the last rows' way to the page
            got = page.evaluate("window.__lag")
            browser.close()
        logs.stop.set()
        metrics.stop.set()
        load = contention()
    finally:
        for h in hogs:
            h.kill()
        for pr in procs:
            pr.terminate()
        for pr in procs:
            pr.wait(timeout=60)
    start = logs.seen[0][1] if logs.seen else t0  # lines present when polling began were not timed
    dom: dict[str, list[int]] = {}
    for text, t in got["lines"]:
        dom.setdefault(text, []).append(t)
    line_lags, missing = [], 0
    for text, t in logs.seen:
        if t <= start + 0.02 or not text.strip():
            continue
        times = dom.get(text)
        if times:
            line_lags.append(times.pop(0) / 1000 - t)
        else:
            missing += 1
    rows = [(json.loads(line), t) for line, t in metrics.seen if line.strip()]
    first = metrics.seen[0][1] if metrics.seen else t0
    points = dict(got["points"])
    point_lags = []
    k = 0
    for row, t in rows:
        if row.get("loss") is None:
            continue
        k += 1
        if t > first + 0.02 and k in points:
            point_lags.append(points[k] / 1000 - t)
    print(f"job {job}, {args.steps} steps, watched {args.seconds:.0f} s, load {args.load} busy processes, "
          f"contention {load:.2f} wall s per CPU s")
    print(f"log line -> DOM:       {lags(line_lags)}  (lines never shown: {missing})")
    print(f"metric row -> plotted: {lags(point_lags)}")


if __name__ == "__main__":
    main()
