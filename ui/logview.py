"""The live log viewer: a ``gr.HTML`` whose value is a batch of new lines.

The browser keeps every line it was sent and appends each batch, so a tick moves only the
new lines over the wire (the Python side reads the API from a cursor). Auto-scroll follows
the end until the user scrolls up, then pauses and shows a "follow" button with the count of
unseen lines. Search filters and highlights in the browser. "Download" asks the server for
the whole log through the API (``server_functions``), so it works in both modes.
"""

from __future__ import annotations

import gradio as gr

from ui.session import Sessions

TEMPLATE = """
<div class="vl-log" data-follow="1">
  <div class="vl-log-bar">
    <span class="vl-log-title">Log</span>
    <input class="vl-log-search" type="search" placeholder="Search the log" aria-label="Search the log"/>
    <span class="vl-log-count">0 lines</span>
    <span class="vl-log-spacer"></span>
    <button class="vl-log-follow" type="button" hidden>&#8595; Follow · <span class="n">0</span> new</button>
    <button class="vl-log-download" type="button">&#8681; Download full log</button>
  </div>
  <div class="vl-log-body" tabindex="0" role="log" aria-live="off"></div>
</div>
"""

CSS = """
.vl-log {border:1px solid #1e293b; border-radius:10px; overflow:hidden; background:#0b1220}
.vl-log-bar {display:flex; align-items:center; gap:10px; padding:8px 10px; background:#111a2e;
  border-bottom:1px solid #1e293b}
.vl-log-title {color:#e2e8f0; font-weight:650; font-size:13px}
.vl-log-search {background:#0b1220; color:#e2e8f0; border:1px solid #334155; border-radius:6px;
  padding:4px 8px; font-size:12px; width:220px; outline:none}
.vl-log-search:focus {border-color:#6366f1}
.vl-log-count {color:#94a3b8; font-size:12px; font-variant-numeric:tabular-nums}
.vl-log-spacer {flex:1}
.vl-log-bar button {background:#1e293b; color:#e2e8f0; border:1px solid #334155; border-radius:6px;
  padding:4px 10px; font-size:12px; cursor:pointer}
.vl-log-bar button:hover {background:#334155}
.vl-log-follow {background:#4f46e5 !important; border-color:#6366f1 !important}
.vl-log-body {height:340px; overflow:auto; padding:8px 0; font-family:ui-monospace,SFMono-Regular,Menlo,monospace;
  font-size:12px; line-height:1.55; color:#cbd5e1}
.vl-line {padding:0 12px; white-space:pre-wrap; word-break:break-all; color:#cbd5e1}
.vl-line:hover {background:#111a2e}
.vl-line.err {color:#fca5a5} .vl-line.warn {color:#fcd34d} .vl-line.step {color:#a5f3fc}
.vl-line mark {background:#facc15; color:#111827; border-radius:2px}
.vl-log-empty {color:#64748b; padding:12px}
"""

JS = r"""
const body = element.querySelector('.vl-log-body');
const root = element.querySelector('.vl-log');
const search = element.querySelector('.vl-log-search');
const follow = element.querySelector('.vl-log-follow');
const count = element.querySelector('.vl-log-count');
const MAX_DOM = 4000;
let lines = [], job = null, session = null, pinned = true, unseen = 0;
const kind = (l) => /error|traceback|exception/i.test(l) ? 'err' : /warn/i.test(l) ? 'warn'
  : /^step \d+\//.test(l) ? 'step' : '';
function node(l, q) {
  const d = document.createElement('div');
  d.className = 'vl-line ' + kind(l);
  if (!q) { d.textContent = l; return d; }
  const low = l.toLowerCase(); let at = 0, i;
  while ((i = low.indexOf(q, at)) >= 0) {
    d.append(l.slice(at, i));
    const m = document.createElement('mark'); m.textContent = l.slice(i, i + q.length); d.append(m);
    at = i + q.length;
  }
  d.append(l.slice(at)); return d;
}
function setPinned(p) {
  pinned = p; if (p) unseen = 0;
  root.dataset.follow = p ? '1' : '0';
  follow.hidden = p; follow.querySelector('.n').textContent = unseen;
}
function counter(shown) {
  const q = search.value.trim();
  count.textContent = q ? `${shown} of ${lines.length} lines match` : `${lines.length} lines`;
}
function render() {
  const q = search.value.trim().toLowerCase();
  const shown = q ? lines.filter(l => l.toLowerCase().includes(q)) : lines;
  const frag = document.createDocumentFragment();
  for (const l of shown.slice(-MAX_DOM)) frag.append(node(l, q));
  if (!lines.length) { const e = document.createElement('div'); e.className = 'vl-log-empty';
    e.textContent = job == null ? 'Select a job to see its log.' : 'Waiting for the first log lines…'; frag.append(e); }
  body.replaceChildren(frag); counter(shown.length);
  if (pinned) body.scrollTop = body.scrollHeight;
}
function append(batch) {
  const q = search.value.trim().toLowerCase();
  const keep = q ? batch.filter(l => l.toLowerCase().includes(q)) : batch;
  if (!lines.length) body.replaceChildren();
  lines.push(...batch);
  for (const l of keep) body.append(node(l, q));
  // Trim only while following: removing lines above the reader would move the text under them.
  if (pinned) { while (body.childElementCount > MAX_DOM) body.firstElementChild.remove();
    body.scrollTop = body.scrollHeight; }
  else { unseen += batch.length; follow.querySelector('.n').textContent = unseen; }
  counter(q ? body.childElementCount : lines.length);
}
body.addEventListener('scroll', () => {
  const atEnd = body.scrollHeight - body.scrollTop - body.clientHeight < 24;
  if (atEnd !== pinned) setPinned(atEnd);
});
follow.addEventListener('click', () => { setPinned(true); body.scrollTop = body.scrollHeight; });
search.addEventListener('input', render);
element.querySelector('.vl-log-download').addEventListener('click', async () => {
  if (job == null) return;
  const text = await server.full_log_text(job, session);
  const url = URL.createObjectURL(new Blob([text], {type: 'text/plain'}));
  const a = document.createElement('a'); a.href = url; a.download = `vlstudio-job-${job}.log`;
  document.body.append(a); a.click(); a.remove(); setTimeout(() => URL.revokeObjectURL(url), 5000);
});
function receive(v) {
  if (!v || typeof v !== 'object') return;
  if (v.session) session = v.session;
  if (v.reset || v.job !== job) { job = v.job; lines = []; setPinned(true); render(); }
  if (v.lines && v.lines.length) append(v.lines);
}
watch('value', () => receive(props.value));
render();
// The viewer mounts when its job view first shows, after that first batch was set.
receive(props.value);
"""


def log_viewer(sessions: Sessions, elem_id: str = "vl-log") -> gr.HTML:
    """The component. Send it ``batch(job_id, lines, reset)`` values from a Python handler."""

    def full_log_text(args: list) -> str:
        # Gradio hands a server function the JS arguments as one list. Server functions get no
        # Gradio session, so the page passes the key its batches carry.
        job_id, session = (list(args) + [None, None])[:2]
        return sessions.api_for(session).full_log(int(job_id))

    return gr.HTML(None, html_template=TEMPLATE, css_template=CSS, js_on_load=JS, elem_id=elem_id,
                   server_functions=[full_log_text], padding=False)


def batch(job_id: int | None, lines: list[str], reset: bool = False, session: str | None = None) -> dict:
    return {"job": job_id, "lines": lines, "reset": reset, "session": session}
