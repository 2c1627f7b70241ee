"""The studio's look: a Gradio theme and the CSS of the widgets in :mod:`ui.widgets`.
System fonts only: the studio often runs where the internet (and Google Fonts) is not."""

from __future__ import annotations

import gradio as gr

FONT = ["Inter", "ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "Roboto", "sans-serif"]
MONO = ["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"]


def theme() -> gr.themes.Base:
    return gr.themes.Soft(primary_hue="indigo", secondary_hue="slate", neutral_hue="slate", radius_size="md",
                          font=FONT, font_mono=MONO).set(
        body_background_fill="#f6f7fb", block_border_width="1px", block_shadow="0 1px 2px rgba(16,24,40,.04)",
        button_primary_background_fill="#4f46e5", button_primary_background_fill_hover="#4338ca")


CSS = """
.gradio-container {max-width: 1280px !important; margin: 0 auto !important}
footer {opacity: .6}
/* app bar */
.vl-appbar {display:flex; align-items:center; gap:14px; padding:14px 4px 6px}
.vl-logo {width:34px; height:34px; border-radius:9px; background:linear-gradient(135deg,#6366f1,#0ea5e9);
  display:flex; align-items:center; justify-content:center; color:#fff; font-weight:800; font-size:18px}
.vl-brand {font-size:20px; font-weight:700; letter-spacing:-.01em; color:#111827}
.vl-tagline {color:#6b7280; font-size:13px}
.vl-appbar-right {margin-left:auto; display:flex; gap:10px; align-items:center; font-size:12px; color:#6b7280}
.vl-dot {width:8px; height:8px; border-radius:50%; display:inline-block; margin-right:6px; background:#9ca3af}
.vl-dot.ok {background:#10b981} .vl-dot.down {background:#ef4444}
.vl-top {align-items:center !important; width:100% !important}
.gradio-container > main, .gradio-container .contain {width:100%}
.vl-login {max-width:420px; margin:40px auto !important; background:#fff; border:1px solid #e5e7eb;
  border-radius:14px; padding:18px 22px !important; box-shadow:0 10px 30px rgba(16,24,40,.06)}
.vl-align-end {align-items:flex-end !important}
/* sections */
.vl-section h2 {margin:6px 0 2px; font-size:18px; font-weight:650; color:#111827}
.vl-section-sub {margin:0 0 6px; color:#6b7280; font-size:13px}
.vl-h3 {font-size:14px; font-weight:650; color:#374151; margin:14px 0 6px}
/* badges */
.vl-badge {display:inline-flex; align-items:center; gap:6px; padding:2px 10px; border-radius:999px;
  font-size:12px; font-weight:600; line-height:20px; white-space:nowrap}
.vl-badge::before {content:''; width:6px; height:6px; border-radius:50%; background:currentColor}
.vl-badge.vl-green {background:#ecfdf5; color:#047857} .vl-badge.vl-red {background:#fef2f2; color:#b91c1c}
.vl-badge.vl-blue {background:#eef2ff; color:#4338ca} .vl-badge.vl-amber {background:#fffbeb; color:#b45309}
.vl-badge.vl-grey {background:#f3f4f6; color:#4b5563}
.vl-pulse::before {animation: vl-pulse 1.2s ease-in-out infinite}
@keyframes vl-pulse {0%,100% {opacity:1} 50% {opacity:.25}}
/* progress */
.vl-progress {height:8px; border-radius:999px; background:#e5e7eb; overflow:hidden; min-width:80px}
.vl-progress-fill {height:100%; border-radius:999px; transition: width .6s ease}
.vl-progress-fill.vl-blue {background:linear-gradient(90deg,#6366f1,#0ea5e9)}
.vl-progress-fill.vl-green {background:#10b981} .vl-progress-fill.vl-red {background:#ef4444}
.vl-progress-fill.vl-grey {background:#9ca3af}
.vl-progress-caption {font-size:12px; color:#6b7280; margin-top:4px; font-variant-numeric:tabular-nums}
/* cards */
.vl-cards {display:grid; grid-template-columns:repeat(auto-fit,minmax(140px,1fr)); gap:10px; margin:4px 0 8px}
.vl-card {background:#fff; border:1px solid #e5e7eb; border-radius:10px; padding:10px 14px}
.vl-card-label {font-size:11px; text-transform:uppercase; letter-spacing:.05em; color:#6b7280; font-weight:600}
.vl-card-value {font-size:22px; font-weight:700; color:#111827; font-variant-numeric:tabular-nums}
.vl-card-sub {font-size:12px; color:#9ca3af; min-height:16px}
/* tables */
.vl-table-wrap {overflow:auto; border:1px solid #e5e7eb; border-radius:10px; background:#fff; max-height:420px}
.vl-table {width:100%; border-collapse:collapse; font-size:13px}
.vl-table th {position:sticky; top:0; background:#f9fafb; text-align:left; font-weight:600; color:#4b5563;
  padding:8px 12px; border-bottom:1px solid #e5e7eb; font-size:12px; text-transform:uppercase; letter-spacing:.03em}
.vl-table td {padding:8px 12px; border-bottom:1px solid #f1f5f9; color:#1f2937; vertical-align:middle}
.vl-table tr:last-child td {border-bottom:none}
.vl-table-wrap table, .vl-table-wrap thead, .vl-table-wrap tbody, .vl-table-wrap tr, .vl-table-wrap th,
.vl-table-wrap td {border-left:0 !important; border-right:0 !important; border-top:0 !important}
.vl-table-wrap table {border:0 !important; margin:0 !important; outline:none !important}
.vl-table-wrap table, .vl-table-wrap tbody, .vl-table-wrap thead, .vl-table-wrap tr {border-bottom:0 !important}
.vl-table-wrap tbody tr:last-child td {border-bottom:0 !important}
.vl-table.vl-clickable tbody tr {cursor:pointer} .vl-table.vl-clickable tbody tr:hover {background:#f5f7ff}
.vl-table tr.vl-selected {background:#eef2ff}
.vl-mono {font-family:ui-monospace,Menlo,monospace; font-size:12px}
.vl-muted {color:#6b7280}
.vl-empty {padding:22px; text-align:center; color:#6b7280; border:1px dashed #d1d5db; border-radius:10px;
  background:#fff; font-size:13px}
/* notices */
.vl-notice {display:flex; gap:12px; padding:12px 14px; border-radius:10px; border:1px solid; font-size:13px}
.vl-notice-title {font-weight:650; margin-bottom:2px}
.vl-notice-icon {width:22px; height:22px; flex:none; border-radius:50%; display:flex; align-items:center;
  justify-content:center; font-weight:800; font-size:12px; color:#fff}
.vl-notice-ok {background:#ecfdf5; border-color:#a7f3d0; color:#065f46} .vl-notice-ok .vl-notice-icon {background:#10b981}
.vl-notice-info {background:#eff6ff; border-color:#bfdbfe; color:#1e3a8a} .vl-notice-info .vl-notice-icon {background:#3b82f6}
.vl-notice-warn {background:#fffbeb; border-color:#fde68a; color:#78350f} .vl-notice-warn .vl-notice-icon {background:#f59e0b}
.vl-notice-error {background:#fef2f2; border-color:#fecaca; color:#7f1d1d} .vl-notice-error .vl-notice-icon {background:#ef4444}
.vl-notice ul {margin:6px 0 0 16px; padding:0}
/* job header */
.vl-jobhead {display:flex; align-items:center; gap:12px; flex-wrap:wrap}
.vl-jobhead h2 {margin:0; font-size:20px; font-weight:700}
.vl-jobmeta {color:#6b7280; font-size:13px}
.vl-kv {display:grid; grid-template-columns:max-content 1fr; gap:4px 16px; font-size:13px}
.vl-kv dt {color:#6b7280} .vl-kv dd {margin:0; font-family:ui-monospace,Menlo,monospace; font-size:12px}
.vl-cmd {background:#0f172a; color:#e2e8f0; border-radius:8px; padding:10px 12px; font-size:12px;
  font-family:ui-monospace,Menlo,monospace; white-space:pre-wrap; word-break:break-all}
a.vl-file {display:inline-block; margin:2px 6px 2px 0; padding:1px 8px; border-radius:6px; background:#eef2ff;
  color:#4338ca !important; font-size:12px; text-decoration:none; font-family:ui-monospace,Menlo,monospace}
a.vl-file:hover {background:#e0e7ff}
/* histograms */
.vl-hist-row {display:grid; grid-template-columns:2fr 1fr; gap:10px}
.vl-hist {background:#fff; border:1px solid #e5e7eb; border-radius:10px; padding:10px 14px; height:100%}
.vl-hist-title {font-size:13px; font-weight:650; color:#374151; margin-bottom:6px}
.vl-hist-cols {display:flex; align-items:flex-end; gap:4px; height:150px; padding-top:16px}
.vl-hist-col {flex:1; display:flex; flex-direction:column; justify-content:flex-end; align-items:center;
  height:100%; min-width:0}
.vl-hist-bar {width:100%; max-width:56px; background:linear-gradient(180deg,#818cf8,#6366f1); border-radius:4px 4px 0 0}
.vl-hist-n {font-size:10px; color:#6b7280; margin-bottom:2px}
.vl-hist-label {font-size:10px; color:#6b7280; margin-top:4px; white-space:nowrap; overflow:hidden;
  text-overflow:ellipsis; max-width:100%}
/* memory estimate */
.vl-changes {font-size:13px; color:#374151; margin:0 0 8px}
.vl-estimate {background:#fff; border:1px solid #e5e7eb; border-radius:10px; padding:4px 14px 10px}
.vl-stack {display:flex; height:12px; border-radius:6px; overflow:hidden; background:#e5e7eb; margin:6px 0}
.vl-stack-legend {display:flex; flex-wrap:wrap; gap:12px; font-size:12px; color:#4b5563; margin-bottom:4px}
.vl-stack-legend i {display:inline-block; width:10px; height:10px; border-radius:3px; margin-right:5px}
.vl-estimate details {font-size:12px; color:#4b5563; margin-top:4px}
/* conversation preview */
.vl-turn {border:1px solid #e5e7eb; border-radius:10px; padding:8px 12px; margin:6px 0; background:#fff}
.vl-turn-role {font-size:11px; text-transform:uppercase; font-weight:700; color:#6b7280; letter-spacing:.05em}
.vl-render {white-space:pre-wrap; font-family:ui-monospace,Menlo,monospace; font-size:12px; line-height:1.6;
  background:#fff; border:1px solid #e5e7eb; border-radius:10px; padding:12px; max-height:360px; overflow:auto}
.vl-trained {background:#dcfce7; color:#14532d; border-radius:3px; box-shadow:0 0 0 1px #86efac inset}
.vl-imgtok {background:#e0e7ff; color:#3730a3; border-radius:3px; padding:0 3px}
.vl-legend {font-size:12px; color:#6b7280; margin:4px 0}
.vl-figure {position:relative; line-height:0} .vl-figure img {border-radius:6px; display:block}
.vl-tilebox {position:absolute; border:1px dashed rgba(255,255,255,.9); box-shadow:0 0 0 1px rgba(79,70,229,.6) inset}
.vl-tiles {display:flex; flex-wrap:wrap; gap:6px; margin:6px 0}
.vl-tiles img {width:84px; height:84px; border-radius:6px; border:1px solid #e5e7eb; object-fit:cover}
.vl-chip { display: inline-block; margin: 0 14px 6px 0; padding: 4px 10px; border: 1px solid #e5e7eb;
  border-radius: 999px; background: #fff; font-size: 13px; }
"""
